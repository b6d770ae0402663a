//! Synthetic counterparties for the benchmark, and the caller numbers to ask for.
//!
//! ```text
//! cargo run --release --example gen_counterparties -- \
//!     --count 100000 --out /tmp/b/counterparties.jsonl \
//!     --numbers /tmp/b/numbers.txt --queries 200000 --seed 42
//! ```
//!
//! `--out` gets `--count` records as JSON Lines, in the shape of
//! `src/directory/model.rs`: a GUID id, a Cyrillic name of 20-60 characters
//! (`ООО "…"`, `АО «…»`, `ИП Фамилия Имя Отчество`…), INN with correct check
//! digits, KPP for legal entities, category 0-3 (sometimes missing), the
//! manager's extension (sometimes missing), 1-3 phones in the formats people
//! type into 1C, an e-mail for some, and a `data_version`. Then what issue 17
//! added to the model, so that the memory benchmark measures it: `kind`
//! (`legal`, `sole_proprietor`), an OGRN (legal) or OGRNIP (sole
//! proprietor) with its check digit, 1C's `code`, `manager_source` beside a
//! manager, and for about a third a CRM page in `links`. These come from a
//! random stream of their own, so the older fields are the same records as
//! before for the same `--seed`.
//!
//! `--numbers` gets `--queries` lines, one caller number each, as the PBX sends
//! them: `8XXXXXXXXXX` mostly, `+7XXXXXXXXXX` for some. About 90% are numbers of
//! generated records (a random record, a random one of its phones); about 10%
//! are numbers that no record has.
//!
//! Every phone number is distinct: phone slot `k` maps to a ten-digit national
//! number through a bijection of `0..10^9` (`bench/phone_slots.rs`), so the
//! unknown numbers are simply slots past the last one used (below the slots
//! left to `bench/push_load.rs`, whose pushed phones are thus new numbers). The
//! output depends only on the flags (and on the `rand` version: `StdRng` is
//! reproducible within one).
//!
//! `--servio FILE` also writes the same records as one SERVIO-like full
//! export file in windows-1251 (`bench/servio.sh`; the shape
//! `config/servio-mapping.example.toml` reads: `/Export/Clients/Client`
//! with `@Code`, `Name`, `INN`, `KPP`, `OGRN`, `Contacts/Phone`,
//! `Contacts/Email`, `Manager/@Ext`, `Group`); `--servio-changed P` changes
//! the name of P% of them (every record whose index is a multiple of 100/P)
//! by appending `--servio-tag` (default `2`), for a re-import.
//!
//! Only std, serde_json, rand and encoding_rs (the crate's, for
//! windows-1251): this builds as an example of the crate.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::exit;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

#[allow(dead_code)] // push_load uses the rest
#[path = "phone_slots.rs"]
mod phone_slots;
use phone_slots::{national, FRESH_BASE, MAX_USED};

struct Args {
    count: u64,
    out: PathBuf,
    numbers: Option<PathBuf>,
    queries: u64,
    seed: u64,
    unknown_percent: u32,
    servio: Option<PathBuf>,
    servio_changed: u32,
    servio_tag: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: gen_counterparties --count N --out FILE [--numbers FILE] [--queries M] [--seed S] [--unknown-percent P] [--servio FILE [--servio-changed P] [--servio-tag T]]\n\
         defaults: --queries 100000 --seed 42 --unknown-percent 10 --servio-changed 0 --servio-tag 2"
    );
    exit(2);
}

fn parse_args() -> Args {
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        v.parse().unwrap_or_else(|e| {
            eprintln!("{flag} {v}: {e}");
            exit(2)
        })
    }
    let mut count = None;
    let mut out = None;
    let mut numbers = None;
    let mut queries = 100_000;
    let mut seed = 42;
    let mut unknown_percent = 10;
    let mut servio = None;
    let mut servio_changed = 0;
    let mut servio_tag = "2".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            usage();
        }
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--count" => count = Some(num(&flag, &v)),
            "--out" => out = Some(PathBuf::from(v)),
            "--numbers" => numbers = Some(PathBuf::from(v)),
            "--queries" => queries = num(&flag, &v),
            "--seed" => seed = num(&flag, &v),
            "--unknown-percent" => unknown_percent = num(&flag, &v),
            "--servio" => servio = Some(PathBuf::from(v)),
            "--servio-changed" => servio_changed = num(&flag, &v),
            "--servio-tag" => servio_tag = v,
            _ => usage(),
        }
    }
    let (Some(count), Some(out)) = (count, out) else {
        usage()
    };
    if unknown_percent > 100 {
        eprintln!("--unknown-percent must be 0..=100");
        exit(2);
    }
    if servio_changed > 100 {
        eprintln!("--servio-changed must be 0..=100");
        exit(2);
    }
    // Up to 3 phones per record, and the unknown numbers need room past them.
    if count > MAX_USED / 3 {
        eprintln!("--count above 300000000 would run out of distinct phone numbers");
        exit(2);
    }
    Args {
        count,
        out,
        numbers,
        queries,
        seed,
        unknown_percent,
        servio,
        servio_changed,
        servio_tag,
    }
}

// ---------------------------------------------------------------- phones

/// Writes a national number the way a person may have typed it into 1C.
fn human_phone(n: u64, style: u32, out: &mut String) {
    use std::fmt::Write as _;
    let d = format!("{n:010}");
    let (code, a, b, c) = (&d[0..3], &d[3..6], &d[6..8], &d[8..10]);
    let _ = match style {
        0 => write!(out, "+7 {code} {a}-{b}-{c}"),
        1 => write!(out, "8 ({code}) {a}-{b}-{c}"),
        2 => write!(out, "8{d}"),
        3 => write!(out, "7-{code}-{a}-{b}-{c}"),
        4 => write!(out, "{d}"),
        5 => write!(out, "+7{d}"),
        6 => write!(out, "+7 ({code}) {a}{b}{c}"),
        _ => write!(out, "8-{code}-{a}-{b}-{c}"),
    };
}

// ---------------------------------------------------------------- names

const FORMS: [(&str, u32); 5] = [("ООО", 60), ("ИП", 20), ("АО", 10), ("ПАО", 3), ("ЗАО", 7)];

const WORDS: [&str; 64] = [
    "Ромашка",
    "Северный",
    "Ветер",
    "Альфа",
    "Стройресурс",
    "Технология",
    "Меридиан",
    "Вектор",
    "Горизонт",
    "Прогресс",
    "Светоч",
    "Заря",
    "Торговый",
    "Дом",
    "Сибирь",
    "Урал",
    "Волга",
    "Логистика",
    "Сервис",
    "Инжиниринг",
    "Комплект",
    "Снабжение",
    "Агро",
    "Продукт",
    "Мебель",
    "Пластик",
    "Металл",
    "Трейд",
    "Групп",
    "Капитал",
    "Энергия",
    "Монтаж",
    "Профиль",
    "Фасад",
    "Кровля",
    "Электро",
    "Сфера",
    "Старт",
    "Импульс",
    "Берёзка",
    "Рассвет",
    "Кедр",
    "Лидер",
    "Партнёр",
    "Стандарт",
    "Консалтинг",
    "Поставка",
    "Технопарк",
    "Авто",
    "Запчасть",
    "Полимер",
    "Текстиль",
    "Хлебозавод",
    "Молоко",
    "Фермер",
    "Медтехника",
    "Оптима",
    "Гранит",
    "Бетон",
    "Арсенал",
    "Навигатор",
    "Бриз",
    "Южный",
    "Восток",
];

const SURNAMES: [&str; 32] = [
    "Иванов",
    "Петров",
    "Сидоров",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
    "Орлов",
    "Андреев",
    "Макаров",
    "Никитин",
    "Захаров",
    "Зайцев",
    "Соловьёв",
    "Борисов",
    "Яковлев",
    "Григорьев",
    "Романов",
];
const MALE_NAMES: [&str; 16] = [
    "Александр",
    "Сергей",
    "Дмитрий",
    "Андрей",
    "Алексей",
    "Максим",
    "Евгений",
    "Иван",
    "Михаил",
    "Николай",
    "Владимир",
    "Пётр",
    "Олег",
    "Юрий",
    "Константин",
    "Виктор",
];
const FEMALE_NAMES: [&str; 12] = [
    "Елена",
    "Ольга",
    "Наталья",
    "Татьяна",
    "Ирина",
    "Светлана",
    "Мария",
    "Анна",
    "Юлия",
    "Екатерина",
    "Людмила",
    "Галина",
];
const PATRONYMICS: [&str; 12] = [
    "Александров",
    "Сергеев",
    "Дмитриев",
    "Андреев",
    "Алексеев",
    "Иванов",
    "Михайлов",
    "Николаев",
    "Владимиров",
    "Петров",
    "Викторов",
    "Юрьев",
];

/// Region codes (the first two INN digits) to draw from.
const REGIONS: [u32; 16] = [
    77, 50, 78, 47, 66, 54, 16, 52, 61, 23, 63, 74, 24, 2, 59, 36,
];

const MAIL_DOMAINS: [&str; 6] = [
    "mail.ru",
    "yandex.ru",
    "bk.ru",
    "inbox.ru",
    "gmail.com",
    "list.ru",
];
const MAIL_BOXES: [&str; 8] = [
    "info", "office", "zakaz", "buh", "sales", "snab", "director", "mail",
];

fn pick_form(rng: &mut StdRng) -> &'static str {
    let total: u32 = FORMS.iter().map(|f| f.1).sum();
    let mut r = rng.random_range(0..total);
    for (form, w) in FORMS {
        if r < w {
            return form;
        }
        r -= w;
    }
    "ООО"
}

fn person(rng: &mut StdRng, out: &mut String) {
    let surname = *SURNAMES.choose(rng).expect("non-empty");
    let patronymic = *PATRONYMICS.choose(rng).expect("non-empty");
    if rng.random_bool(0.7) {
        let name = *MALE_NAMES.choose(rng).expect("non-empty");
        out.push_str(&format!("{surname} {name} {patronymic}ич"));
    } else {
        let name = *FEMALE_NAMES.choose(rng).expect("non-empty");
        out.push_str(&format!("{surname}а {name} {patronymic}на"));
    }
}

/// A name of 20..=60 characters; returns whether it is a sole proprietor.
fn company_name(rng: &mut StdRng, out: &mut String) -> bool {
    out.clear();
    let form = pick_form(rng);
    if form == "ИП" {
        out.push_str("ИП ");
        person(rng, out);
        return true;
    }
    let (open, close) = match rng.random_range(0..3) {
        0 => ("«", "»"),
        _ => ("\"", "\""),
    };
    let mut inner = String::with_capacity(64);
    // 1-4 words, then pad or trim so the whole name is 20..=60 characters.
    let words = rng.random_range(1..=4);
    for i in 0..words {
        if i > 0 {
            inner.push(if rng.random_bool(0.2) { '-' } else { ' ' });
        }
        inner.push_str(WORDS.choose(rng).expect("non-empty"));
    }
    let overhead = form.chars().count() + 1 + 2; // form, space, quotes
    for _ in 0..8 {
        if inner.chars().count() + overhead >= 20 {
            break;
        }
        inner.push(' ');
        inner.push_str(WORDS.choose(rng).expect("non-empty"));
    }
    while inner.chars().count() + overhead > 60 {
        match inner.rfind([' ', '-']) {
            Some(cut) => inner.truncate(cut),
            None => {
                let keep: String = inner.chars().take(60 - overhead).collect();
                inner = keep;
            }
        }
    }
    if inner.chars().count() + overhead < 20 {
        inner.push_str(" Плюс"); // one short word can still leave it at 19
    }
    out.push_str(form);
    out.push(' ');
    out.push_str(open);
    out.push_str(&inner);
    out.push_str(close);
    false
}

// ---------------------------------------------------------------- INN

fn check_digit(digits: &[u8], weights: &[u32]) -> u8 {
    let sum: u32 = digits
        .iter()
        .zip(weights)
        .map(|(d, w)| u32::from(*d) * w)
        .sum();
    ((sum % 11) % 10) as u8
}

/// A legal entity's INN: region, tax office, serial, check digit.
fn inn10(rng: &mut StdRng) -> [u8; 10] {
    let mut d = [0u8; 10];
    let region = *REGIONS.choose(rng).expect("non-empty");
    d[0] = (region / 10) as u8;
    d[1] = (region % 10) as u8;
    for x in d.iter_mut().take(9).skip(2) {
        *x = rng.random_range(0..10);
    }
    d[9] = check_digit(&d[..9], &[2, 4, 10, 3, 5, 9, 4, 6, 8]);
    d
}

/// A person's (sole proprietor's) INN: two check digits.
fn inn12(rng: &mut StdRng) -> [u8; 12] {
    let mut d = [0u8; 12];
    let region = *REGIONS.choose(rng).expect("non-empty");
    d[0] = (region / 10) as u8;
    d[1] = (region % 10) as u8;
    for x in d.iter_mut().take(10).skip(2) {
        *x = rng.random_range(0..10);
    }
    d[10] = check_digit(&d[..10], &[7, 2, 4, 10, 3, 5, 9, 4, 6, 8]);
    d[11] = check_digit(&d[..11], &[3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8]);
    d
}

fn push_digits(d: &[u8], out: &mut String) {
    out.extend(d.iter().map(|x| char::from(b'0' + x)));
}

/// An OGRN (13 digits) or, for a sole proprietor, an OGRNIP (15): the
/// number without its last digit, modulo 11 (OGRN) or 13 (OGRNIP), modulo
/// 10, is the check digit.
fn ogrn(rng: &mut StdRng, sole: bool) -> String {
    let (len, first, modulus) = if sole { (15, 3, 13) } else { (13, 1, 11) };
    let mut number: u64 = first;
    for _ in 1..len - 1 {
        number = number * 10 + rng.random_range(0..10u64);
    }
    format!("{number}{}", number % modulus % 10)
}

// ---------------------------------------------------------------- records

/// Appends `"key":` and the JSON string `value`.
fn json_str(key: &str, value: &str, line: &mut Vec<u8>) {
    line.push(b'"');
    line.extend_from_slice(key.as_bytes());
    line.extend_from_slice(b"\":");
    serde_json::to_writer(&mut *line, value).expect("writing to a Vec cannot fail");
}

fn guid(rng: &mut StdRng, out: &mut String) {
    use std::fmt::Write as _;
    let x: u128 = rng.random();
    // Version 4, RFC 4122 variant: looks like what 1C's Ref_Key holds.
    let x = (x & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{x:032x}");
    let _ = write!(
        out,
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
}

fn main() -> io::Result<()> {
    let args = parse_args();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let b = phone_slots::draw_offset(&mut rng);
    // The fields issue 17 added, from a stream of their own (see above).
    let mut added = StdRng::seed_from_u64(args.seed ^ 0x0017_0017_0017);

    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args.out)?);
    // First phone slot of record i is starts[i]; its phones are starts[i]..starts[i+1].
    let mut starts: Vec<u32> = Vec::with_capacity(args.count as usize + 1);
    let mut slot: u64 = 0;
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut s = String::with_capacity(256);
    let mut phones_total = 0u64;
    let mut bytes = 0u64;

    for i in 0..args.count {
        starts.push(slot as u32);
        line.clear();
        line.push(b'{');

        s.clear();
        guid(&mut rng, &mut s);
        json_str("id", &s, &mut line);

        let sole = company_name(&mut rng, &mut s);
        line.push(b',');
        json_str("name", &s, &mut line);

        s.clear();
        if sole {
            push_digits(&inn12(&mut rng), &mut s);
            line.push(b',');
            json_str("inn", &s, &mut line);
        } else {
            let inn = inn10(&mut rng);
            push_digits(&inn, &mut s);
            line.push(b',');
            json_str("inn", &s, &mut line);
            s.clear();
            push_digits(&inn[..4], &mut s);
            s.push_str(if rng.random_bool(0.9) {
                "01001"
            } else {
                "43001"
            });
            line.push(b',');
            json_str("kpp", &s, &mut line);
        }

        if rng.random_bool(0.85) {
            let category = rng.random_range(0..4u8);
            line.extend_from_slice(format!(",\"category\":{category}").as_bytes());
        }
        if rng.random_bool(0.9) {
            // 150 managers on extensions 101..=250.
            let ext = rng.random_range(101..=250u32);
            line.push(b',');
            json_str("manager_phone", &ext.to_string(), &mut line);
            line.push(b',');
            json_str("manager_source", "onec", &mut line);
        }

        let n_phones = match rng.random_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        line.extend_from_slice(b",\"phones\":[");
        for p in 0..n_phones {
            if p > 0 {
                line.push(b',');
            }
            s.clear();
            human_phone(national(slot, b), rng.random_range(0..8), &mut s);
            serde_json::to_writer(&mut line, s.as_str()).expect("writing to a Vec cannot fail");
            slot += 1;
        }
        line.push(b']');
        phones_total += n_phones;

        if rng.random_bool(0.4) {
            s.clear();
            s.push_str(MAIL_BOXES.choose(&mut rng).expect("non-empty"));
            s.push_str(&format!("{}@", i % 997));
            s.push_str(MAIL_DOMAINS.choose(&mut rng).expect("non-empty"));
            line.extend_from_slice(b",\"emails\":[");
            serde_json::to_writer(&mut line, s.as_str()).expect("writing to a Vec cannot fail");
            line.push(b']');
        }

        line.push(b',');
        json_str(
            "kind",
            if sole { "sole_proprietor" } else { "legal" },
            &mut line,
        );
        line.push(b',');
        json_str(
            if sole { "ogrnip" } else { "ogrn" },
            &ogrn(&mut added, sole),
            &mut line,
        );
        line.push(b',');
        json_str("code", &format!("{:09}", i + 1), &mut line);
        if added.random_bool(0.33) {
            let company: u32 = added.random_range(1..10_000_000);
            line.extend_from_slice(b",\"links\":[{");
            json_str("system", "bitrix24", &mut line);
            line.push(b',');
            json_str("kind", "company", &mut line);
            line.push(b',');
            json_str(
                "url",
                &format!("https://portal.example.ru/crm/company/details/{company}/"),
                &mut line,
            );
            line.extend_from_slice(b"}]");
        }

        // 1C's DataVersion looks like a short base64 string.
        let dv: u64 = rng.random_range(0..1 << 40);
        line.push(b',');
        json_str("data_version", &format!("AAAA{dv:010x}="), &mut line);

        line.extend_from_slice(b"}\n");
        bytes += line.len() as u64;
        out.write_all(&line)?;
    }
    starts.push(slot as u32);
    out.flush()?;
    drop(out);

    if let Some(path) = &args.servio {
        let clients = write_servio(&args, path)?;
        eprintln!(
            "gen_counterparties: {clients} SERVIO clients ({}% renamed) -> {}",
            args.servio_changed,
            path.display()
        );
    }

    let mut known = 0u64;
    let mut unknown = 0u64;
    if let Some(path) = &args.numbers {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        // A separate stream: the same --seed gives the same records whatever --queries is.
        let mut q = StdRng::seed_from_u64(args.seed ^ 0x005E_ED0F_CA11);
        let used = slot;
        for _ in 0..args.queries {
            let k = if args.count > 0 && q.random_range(0..100) >= args.unknown_percent {
                known += 1;
                let r = q.random_range(0..args.count) as usize;
                q.random_range(u64::from(starts[r])..u64::from(starts[r + 1]))
            } else {
                unknown += 1;
                q.random_range(used..FRESH_BASE)
            };
            let n = national(k, b);
            if q.random_bool(0.8) {
                writeln!(out, "8{n:010}")?;
            } else {
                writeln!(out, "+7{n:010}")?;
            }
        }
        out.flush()?;
    }

    eprintln!(
        "gen_counterparties: {} records, {} phones, {:.1} MB JSON Lines -> {}; {} numbers ({} known, {} unknown){}; {:.2}s",
        args.count,
        phones_total,
        bytes as f64 / 1e6,
        args.out.display(),
        known + unknown,
        known,
        unknown,
        args.numbers
            .as_ref()
            .map(|p| format!(" -> {}", p.display()))
            .unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- SERVIO

/// XML text with `&`, `<`, `>` and `"` escaped.
fn xml_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// The records just written to `--out`, as one SERVIO-like full export in
/// windows-1251 (see the module's doc). Returns the clients written.
fn write_servio(args: &Args, path: &std::path::Path) -> io::Result<u64> {
    use std::io::BufRead as _;
    let input = io::BufReader::new(File::open(&args.out)?);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let every = match args.servio_changed {
        0 => u64::MAX,
        p => u64::from(100 / p),
    };
    let mut write = |text: &str| -> io::Result<()> {
        let (bytes, _, _) = encoding_rs::WINDOWS_1251.encode(text);
        out.write_all(&bytes)
    };
    write("<?xml version=\"1.0\" encoding=\"windows-1251\"?>\n<Export>\n<Clients>\n")?;
    let mut clients = 0u64;
    let mut x = String::with_capacity(1024);
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let r: serde_json::Value = serde_json::from_str(&line).map_err(io::Error::other)?;
        let field = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
        x.clear();
        x.push_str("<Client Code=\"");
        xml_text(field("code"), &mut x);
        x.push_str("\">\n  <Name>");
        xml_text(field("name"), &mut x);
        if i as u64 % every == 0 {
            x.push(' ');
            xml_text(&args.servio_tag, &mut x);
        }
        x.push_str("</Name>\n");
        for key in ["inn", "kpp", "ogrn"] {
            if !field(key).is_empty() {
                x.push_str(&format!(
                    "  <{}>{}</{}>\n",
                    key.to_uppercase(),
                    field(key),
                    key.to_uppercase()
                ));
            }
        }
        x.push_str("  <Contacts>");
        for list in ["phones", "emails"] {
            let tag = if list == "phones" { "Phone" } else { "Email" };
            for v in r.get(list).and_then(|v| v.as_array()).into_iter().flatten() {
                x.push_str(&format!("<{tag}>"));
                xml_text(v.as_str().unwrap_or(""), &mut x);
                x.push_str(&format!("</{tag}>"));
            }
        }
        x.push_str("</Contacts>\n");
        if !field("manager_phone").is_empty() {
            x.push_str(&format!(
                "  <Manager Ext=\"{}\">Менеджер</Manager>\n",
                field("manager_phone")
            ));
        }
        if let Some(c) = r.get("category").and_then(|v| v.as_i64()) {
            x.push_str(&format!("  <Group>{c}</Group>\n"));
        }
        x.push_str("</Client>\n");
        write(&x)?;
        clients += 1;
    }
    write("</Clients>\n</Export>\n")?;
    out.flush()?;
    Ok(clients)
}
