//! The requisite check: whether a counterparty's INN, KPP, OGRN/OGRNIP (and,
//! for the bank details the sync store keeps, BIK and accounts) are numbers
//! the tax service and the Bank of Russia could have issued.
//!
//! Apart from [`Counterparty::validate`] on purpose: `validate` decides
//! whether a record may enter the directory at all, and a mistyped INN must
//! never cost a caller. A record failing this check keeps answering SayName;
//! the push API warns about it, file and 1C reads count it
//! (`cti_directory_invalid_requisites_total{source,field}`), and the sync
//! steps to come do not send it to other systems.
//!
//! Algorithms (looked up, not guessed):
//! - INN: check digits `(Σ dᵢ·wᵢ mod 11) mod 10`, weights 2,4,10,3,5,9,4,6,8
//!   (10 digits), 7,2,4,10,3,5,9,4,6,8 then 3,7,2,4,10,3,5,9,4,6,8 (12
//!   digits): the tax service's order on the INN (ФНС, приказ ММВ-7-6/435@;
//!   summarized at consultant.ru/document/cons_doc_LAW_134082).
//! - OGRN / OGRNIP: the last digit is the low digit of the number of the
//!   first 12 (13) digits modulo 11 (13): Приказ ФНС / Постановление
//!   Правительства РФ № 438 (ОГРН), № 630 (ОГРНИП).
//! - Accounts: "Порядок расчёта контрольного ключа в номере лицевого счёта"
//!   (Банк России, 08.09.1997 N 515, consultant.ru/document/cons_doc_LAW_16053):
//!   the 3-digit conditional number (BIK digits 7-9 for an account at a
//!   credit organization; `0` and BIK digits 5-6 at a settlement centre,
//!   always so for a correspondent account) followed by the 20-digit
//!   account, weights 7,1,3 repeated; the low digit of the sum is 0.

use std::fmt;

use super::Counterparty;

/// One requisite that fails the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The model's field name (`inn`, `kpp`, `ogrn`, `ogrnip`; `bik`,
    /// `account`, `corr_account` for bank details).
    pub field: &'static str,
    /// The value as given (trimmed, cut to 64 characters).
    pub value: String,
    pub problem: &'static str,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}: {}", self.field, self.problem, self.value)
    }
}

/// The fields [`check`] and [`check_bank`] may name, for metrics that are
/// set up before any record is seen.
pub const FIELDS: [&str; 7] = [
    "inn",
    "kpp",
    "ogrn",
    "ogrnip",
    "bik",
    "account",
    "corr_account",
];

/// Every requisite of `record` that is present and fails its check, in the
/// model's field order. An absent or blank field is not checked.
pub fn check(record: &Counterparty) -> Vec<Problem> {
    let mut problems = Vec::new();
    let fields: [(&'static str, Option<&str>, Rule); 4] = [
        ("inn", record.inn.as_deref(), inn),
        ("kpp", record.kpp.as_deref(), kpp),
        ("ogrn", record.ogrn.as_deref(), ogrn),
        ("ogrnip", record.ogrnip.as_deref(), ogrnip),
    ];
    for (field, value, rule) in fields {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        if let Err(problem) = rule(value) {
            problems.push(Problem {
                field,
                value: value.chars().take(64).collect(),
                problem,
            });
        }
    }
    problems
}

/// Bank details: the BIK and the accounts keyed against it. An empty
/// account is not checked; a bad BIK leaves the accounts unchecked (there
/// is nothing to key them against).
pub fn check_bank(bik_value: &str, account_value: &str, corr_value: &str) -> Vec<Problem> {
    let problem = |field, value: &str, problem| Problem {
        field,
        value: value.chars().take(64).collect(),
        problem,
    };
    let (bik_value, account_value, corr_value) =
        (bik_value.trim(), account_value.trim(), corr_value.trim());
    if let Err(p) = bik(bik_value) {
        return vec![problem("bik", bik_value, p)];
    }
    let mut problems = Vec::new();
    if !account_value.is_empty() {
        if let Err(p) = account(bik_value, account_value) {
            problems.push(problem("account", account_value, p));
        }
    }
    if !corr_value.is_empty() {
        if let Err(p) = corr_account(bik_value, corr_value) {
            problems.push(problem("corr_account", corr_value, p));
        }
    }
    problems
}

/// A requisite's rule: `Err` says what is wrong.
type Rule = fn(&str) -> Result<(), &'static str>;

const NOT_DIGITS: &str = "must be digits only";

fn digits(text: &str) -> Option<Vec<u32>> {
    text.chars().map(|c| c.to_digit(10)).collect()
}

/// `(Σ dᵢ·wᵢ mod 11) mod 10`: the INN's check digit over `d`.
fn inn_digit(d: &[u32], weights: &[u32]) -> u32 {
    d.iter().zip(weights).map(|(d, w)| d * w).sum::<u32>() % 11 % 10
}

/// INN: 10 digits (an organization) or 12 (a person or sole proprietor),
/// with the tax service's check digits.
pub fn inn(text: &str) -> Result<(), &'static str> {
    const W10: [u32; 9] = [2, 4, 10, 3, 5, 9, 4, 6, 8];
    const W11: [u32; 10] = [7, 2, 4, 10, 3, 5, 9, 4, 6, 8];
    const W12: [u32; 11] = [3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8];
    let d = digits(text).ok_or(NOT_DIGITS)?;
    let good = match d.len() {
        10 => inn_digit(&d, &W10) == d[9],
        12 => inn_digit(&d, &W11) == d[10] && inn_digit(&d, &W12) == d[11],
        _ => return Err("must be 10 digits (organization) or 12 (person)"),
    };
    if good {
        Ok(())
    } else {
        Err("check digit does not match")
    }
}

/// KPP: `\d{4}[\dA-Z]{2}\d{3}` (the reason code may hold Latin capitals).
pub fn kpp(text: &str) -> Result<(), &'static str> {
    let b = text.as_bytes();
    let fits = b.len() == 9
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4..6]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && b[6..].iter().all(u8::is_ascii_digit);
    if fits {
        Ok(())
    } else {
        Err("must be 9 characters: 4 digits, 2 digits or capital Latin letters, 3 digits")
    }
}

/// The OGRN family's rule: the number of all digits but the last, modulo
/// `modulus`, ends in the last digit.
fn ogrn_rule(
    text: &str,
    len: usize,
    modulus: u64,
    wrong_len: &'static str,
) -> Result<(), &'static str> {
    let d = digits(text).ok_or(NOT_DIGITS)?;
    if d.len() != len {
        return Err(wrong_len);
    }
    // At most 14 digits: fits a u64.
    let body = d[..len - 1]
        .iter()
        .fold(0u64, |n, &x| n * 10 + u64::from(x));
    if (body % modulus % 10) as u32 == d[len - 1] {
        Ok(())
    } else {
        Err("check digit does not match")
    }
}

/// OGRN: 13 digits, the last the low digit of the first 12 modulo 11.
pub fn ogrn(text: &str) -> Result<(), &'static str> {
    ogrn_rule(
        text,
        13,
        11,
        "must be 13 digits (a sole proprietor's OGRNIP, 15, goes in `ogrnip`)",
    )
}

/// OGRNIP: 15 digits, the last the low digit of the first 14 modulo 13.
pub fn ogrnip(text: &str) -> Result<(), &'static str> {
    ogrn_rule(text, 15, 13, "must be 15 digits")
}

/// BIK: 9 digits.
pub fn bik(text: &str) -> Result<(), &'static str> {
    match digits(text) {
        Some(d) if d.len() == 9 => Ok(()),
        Some(_) => Err("must be 9 digits"),
        None => Err(NOT_DIGITS),
    }
}

/// The Bank of Russia's key over a conditional number and an account.
fn keyed(conditional: &[u32], account: &[u32]) -> bool {
    const WEIGHTS: [u32; 3] = [7, 1, 3];
    conditional
        .iter()
        .chain(account)
        .zip(WEIGHTS.iter().cycle())
        .map(|(d, w)| d * w)
        .sum::<u32>()
        % 10
        == 0
}

fn account_digits(text: &str) -> Result<Vec<u32>, &'static str> {
    match digits(text) {
        Some(d) if d.len() == 20 => Ok(d),
        Some(_) => Err("must be 20 digits"),
        None => Err(NOT_DIGITS),
    }
}

/// A settlement account at the bank `bik`: keyed with BIK digits 7-9 at a
/// credit organization, with `0` and digits 5-6 at a Bank of Russia
/// settlement centre (whose BIK ends in 000-002).
pub fn account(bik_text: &str, text: &str) -> Result<(), &'static str> {
    let b = digits(bik_text)
        .filter(|b| b.len() == 9)
        .ok_or("the BIK is not 9 digits")?;
    let a = account_digits(text)?;
    let conditional = if b[6] == 0 && b[7] == 0 && b[8] <= 2 {
        [0, b[4], b[5]]
    } else {
        [b[6], b[7], b[8]]
    };
    if keyed(&conditional, &a) {
        Ok(())
    } else {
        Err("control key does not match the BIK")
    }
}

/// A correspondent account: keyed with `0` and BIK digits 5-6.
pub fn corr_account(bik_text: &str, text: &str) -> Result<(), &'static str> {
    let b = digits(bik_text)
        .filter(|b| b.len() == 9)
        .ok_or("the BIK is not 9 digits")?;
    let a = account_digits(text)?;
    if keyed(&[0, b[4], b[5]], &a) {
        Ok(())
    } else {
        Err("control key does not match the BIK")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with the digit at `at` changed (one digit off).
    fn off(text: &str, at: usize) -> String {
        text.char_indices()
            .map(|(i, c)| match (i == at, c.to_digit(10)) {
                (true, Some(d)) => char::from_digit((d + 1) % 10, 10).unwrap_or(c),
                _ => c,
            })
            .collect()
    }

    // Published values: Sberbank's INN, OGRN, BIK and correspondent account
    // (its public requisites), the tax service's example INN of a person,
    // the OGRNIP of the Wikipedia article's example, and the Bank of
    // Russia's worked examples in N 515 (accounts at BIK 049805746).
    const INN10: &str = "7707083893";
    const INN12: &str = "500100732259";
    const OGRN: &str = "1027700132195";
    const OGRNIP: &str = "304500116000157";
    const BIK: &str = "044525225";
    const CORR: &str = "30101810400000000225";
    const CB_BIK: &str = "049805746";
    const CB_ACCOUNT: &str = "40602810700000000025";
    const CB_CORR: &str = "30101810800000000746";

    #[test]
    fn published_inns_pass_and_one_digit_off_fails() {
        assert_eq!(inn(INN10), Ok(()));
        assert_eq!(inn(INN12), Ok(()));
        for at in 0..10 {
            assert_eq!(
                inn(&off(INN10, at)),
                Err("check digit does not match"),
                "{at}"
            );
        }
        for at in 0..12 {
            assert_eq!(
                inn(&off(INN12, at)),
                Err("check digit does not match"),
                "{at}"
            );
        }
        assert!(inn("770708389").is_err());
        assert_eq!(inn("77070838x3"), Err(NOT_DIGITS));
    }

    #[test]
    fn published_ogrns_pass_and_one_digit_off_fails() {
        assert_eq!(ogrn(OGRN), Ok(()));
        assert_eq!(ogrnip(OGRNIP), Ok(()));
        assert_eq!(ogrn(&off(OGRN, 12)), Err("check digit does not match"));
        assert_eq!(ogrn(&off(OGRN, 3)), Err("check digit does not match"));
        assert_eq!(ogrnip(&off(OGRNIP, 14)), Err("check digit does not match"));
        assert_eq!(ogrnip(&off(OGRNIP, 5)), Err("check digit does not match"));
        assert!(ogrn(OGRNIP).is_err(), "an OGRNIP is not an OGRN");
        assert!(ogrnip(OGRN).is_err());
    }

    #[test]
    fn kpp_has_four_digits_two_digits_or_capitals_three_digits() {
        for good in ["770701001", "7707AB001", "77070Z001"] {
            assert_eq!(kpp(good), Ok(()), "{good}");
        }
        for bad in [
            "77070100",
            "7707ab001",
            "A70701001",
            "7707010011",
            "77070100Б",
        ] {
            assert!(kpp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accounts_are_keyed_against_the_bik() {
        assert_eq!(bik(BIK), Ok(()));
        assert!(bik("04452522").is_err());
        assert_eq!(corr_account(BIK, CORR), Ok(()));
        assert_eq!(corr_account(CB_BIK, CB_CORR), Ok(()));
        assert_eq!(account(CB_BIK, CB_ACCOUNT), Ok(()));
        for at in [0, 8, 19] {
            assert!(account(CB_BIK, &off(CB_ACCOUNT, at)).is_err(), "{at}");
            assert!(corr_account(BIK, &off(CORR, at)).is_err(), "{at}");
        }
        // The right account at another bank's BIK does not key (at most BIKs:
        // a 3-digit key passes one account in ten by chance, 044525225 among them).
        assert!(account("044525974", CB_ACCOUNT).is_err());
        assert!(corr_account(CB_BIK, CORR).is_err());
    }

    #[test]
    fn check_names_each_failing_field_with_its_value() {
        let mut c: Counterparty =
            serde_json::from_str(r#"{"id":"1","name":"Ромашка"}"#).expect("valid json");
        assert!(check(&c).is_empty(), "absent requisites are not checked");
        c.inn = Some(" 7707083894 ".into());
        c.kpp = Some("770701001".into());
        c.ogrn = Some(OGRN.into());
        c.ogrnip = Some("12345".into());
        let problems = check(&c);
        assert_eq!(
            problems.iter().map(|p| p.field).collect::<Vec<_>>(),
            ["inn", "ogrnip"]
        );
        assert_eq!(
            problems[0].to_string(),
            "`inn`: check digit does not match: 7707083894"
        );
        c.inn = Some("  ".into());
        assert_eq!(check(&c).len(), 1, "a blank INN is absent");
    }

    #[test]
    fn bank_details_are_checked_together() {
        assert!(check_bank(BIK, "", CORR).is_empty());
        assert!(check_bank(CB_BIK, CB_ACCOUNT, CB_CORR).is_empty());
        let p = check_bank(CB_BIK, &off(CB_ACCOUNT, 10), CB_CORR);
        assert_eq!(p.iter().map(|p| p.field).collect::<Vec<_>>(), ["account"]);
        let p = check_bank("12345", CB_ACCOUNT, CB_CORR);
        assert_eq!(p.iter().map(|p| p.field).collect::<Vec<_>>(), ["bik"]);
    }
}
