use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Every field filled, with what JSON escapes and what UTF-8 makes long.
fn full_record() -> Counterparty {
    Counterparty {
        id: "5f1c0e2a-7b3d-11ee-b962-0242ac120002".into(),
        name: "ООО \"Ромашка\" <оптовый склад> & Co".into(),
        full_name: Some("Общество с ограниченной ответственностью «Ромашка»\t\\".into()),
        inn: Some("7707083893".into()),
        kpp: Some("773601001".into()),
        ogrn: Some("1027700132195".into()),
        ogrnip: Some("304500116000157".into()),
        code: Some("00-000123".into()),
        kind: Some(Kind::SoleProprietor),
        category: Some(-3),
        manager_phone: Some("301".into()),
        manager_name: Some("Петров Пётр 🙂".into()),
        manager_source: Some("onec".into()),
        phones: vec![
            "+7 (495) 123-45-67".into(),
            "8 916 000 00 11".into(),
            "".into(),
        ],
        emails: vec!["info@romashka.ru".into(), "\u{1}ctl\"q".into()],
        address: Some("Москва, ул. Ленина, д. 1\nофис 2".into()),
        links: vec![
            Link {
                system: "bitrix24".into(),
                kind: "company".into(),
                url: "https://portal.example/crm/company/details/2919/?a=1&b=\"2\"".into(),
            },
            Link {
                system: "amocrm".into(),
                kind: "contact".into(),
                url: "http://амо.example/контакт".into(),
            },
        ]
        .into(),
        data_version: Some("AAAAAAAAB+c=".into()),
    }
}

fn minimal_record() -> Counterparty {
    Counterparty {
        id: "1".into(),
        name: "Я".into(),
        ..Counterparty::default()
    }
}

/// Round trip through the compact form, for the answer `answer`: the same
/// record, and the same canonical JSON byte for byte.
fn assert_round_trip(record: &Counterparty, answer: &[u8]) {
    let packed = Packed::new(record, answer);
    let back = packed.unpack(answer).expect("unpacks");
    assert_eq!(&back, record);
    let json = serde_json::to_string(record).expect("serializes");
    assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
    // Written straight from the compact form: the same bytes, after what
    // the buffer held.
    let mut buf = b"row:".to_vec();
    packed.write_json(answer, &mut buf).expect("writes");
    assert_eq!(
        String::from_utf8(buf).expect("UTF-8"),
        format!("row:{json}")
    );
    assert_eq!(packed.id(), &*record.id);
    assert_eq!(packed.inn(), record.inn.as_deref());
    assert_eq!(packed.data_version(), record.data_version.as_deref());
}

#[test]
fn every_field_round_trips_whatever_the_answer_holds() {
    let full = full_record();
    let plain_name = Counterparty {
        name: "ИП Иванов Иван Иванович".into(),
        ..full_record()
    };
    for record in [&full, &plain_name, &minimal_record()] {
        // The answer holds the name as it is (stored as where it is there),
        // first or after other bytes, or escaped (stored in full), or is
        // empty.
        let mut starts_with_name = record.name.as_bytes().to_vec();
        starts_with_name.extend_from_slice(b"\0 2\0 301");
        assert_round_trip(record, &starts_with_name);
        let after_lengths = [b"\x10\0\x01".as_slice(), &starts_with_name].concat();
        assert_round_trip(record, &after_lengths);
        assert_round_trip(record, b"&amp;lt;escaped\0\0");
        assert_round_trip(record, b"");
    }
}

#[test]
fn each_kind_and_extreme_categories_round_trip() {
    for kind in [
        None,
        Some(Kind::Legal),
        Some(Kind::SoleProprietor),
        Some(Kind::Person),
    ] {
        for category in [
            None,
            Some(0),
            Some(1),
            Some(-1),
            Some(63),
            Some(64),
            Some(i64::MAX),
            Some(i64::MIN),
        ] {
            let record = Counterparty {
                kind,
                category,
                ..minimal_record()
            };
            assert_round_trip(&record, b"");
        }
    }
}

#[test]
fn empty_and_absent_are_told_apart() {
    let record = Counterparty {
        inn: Some("".into()),
        data_version: Some("".into()),
        full_name: Some("".into()),
        manager_phone: Some("".into()),
        phones: vec!["".into()],
        emails: vec!["".into()],
        ..minimal_record()
    };
    assert_round_trip(&record, b"");
    let packed = Packed::new(&record, b"");
    assert_eq!(packed.inn(), Some(""));
    let none = Packed::new(&minimal_record(), b"");
    assert_eq!((none.inn(), none.data_version()), (None, None));
}

#[test]
fn long_fields_take_lengths_of_several_bytes() {
    let long: String = "ж".repeat(3000);
    let record = Counterparty {
        id: "x".repeat(128).into(),
        name: long.clone().into(),
        address: Some(long.clone().into()),
        inn: Some(long.clone().into()),
        phones: (0..40)
            .map(|i| format!("+7 900 000 00 {i:02}").into())
            .collect(),
        ..full_record()
    };
    assert_round_trip(&record, long.as_bytes());
    assert_round_trip(&record, b"");
}

#[test]
fn random_records_round_trip() {
    let mut rng = StdRng::seed_from_u64(17);
    let alphabet: Vec<char> = "aZ09 \"\\/<>&'\n\t\u{0}\u{7f}\u{80}ёЖ€🙂\u{202e}{}[]:,"
        .chars()
        .collect();
    let text = |rng: &mut StdRng, max: usize| -> Box<str> {
        let n = rng.random_range(0..=max);
        (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect::<String>()
            .into()
    };
    for _ in 0..2_000 {
        let opt = |rng: &mut StdRng, max| rng.random_bool(0.5).then(|| text(rng, max));
        let record = Counterparty {
            id: text(&mut rng, 40),
            name: text(&mut rng, 80),
            full_name: opt(&mut rng, 200),
            inn: opt(&mut rng, 12),
            kpp: opt(&mut rng, 9),
            ogrn: opt(&mut rng, 13),
            ogrnip: opt(&mut rng, 15),
            code: opt(&mut rng, 11),
            kind: [
                None,
                Some(Kind::Legal),
                Some(Kind::SoleProprietor),
                Some(Kind::Person),
            ][rng.random_range(0..4)],
            category: rng.random_bool(0.7).then(|| rng.random()),
            manager_phone: opt(&mut rng, 6),
            manager_name: opt(&mut rng, 30),
            manager_source: opt(&mut rng, 8),
            phones: (0..rng.random_range(0..4))
                .map(|_| text(&mut rng, 20))
                .collect(),
            emails: (0..rng.random_range(0..3))
                .map(|_| text(&mut rng, 20))
                .collect(),
            address: opt(&mut rng, 100),
            links: (0..rng.random_range(0..3))
                .map(|_| Link {
                    system: text(&mut rng, 8),
                    kind: text(&mut rng, 8),
                    url: text(&mut rng, 60),
                })
                .collect(),
            data_version: opt(&mut rng, 12),
        };
        let mut answer = if rng.random_bool(0.5) {
            record.name.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        answer.extend_from_slice(text(&mut rng, 10).as_bytes());
        assert_round_trip(&record, &answer);
    }
}

#[test]
fn the_compact_form_is_well_under_the_json() {
    // A record as the benchmark's generator writes them, with a name the
    // SOAP renderer keeps as it is.
    let record = Counterparty {
        name: "ООО Ромашка Северо-Запад".into(),
        emails: vec!["info@romashka.ru".into()],
        ..full_record()
    };
    let answer = crate::soap::say_name_payload(&record);
    let packed = Packed::new(&record, &answer);
    assert!(
        !packed.text.contains(&*record.name),
        "the name is kept once, in the answer"
    );
    let json = serde_json::to_string(&record).expect("serializes");
    assert!(
        packed.heap_len() * 10 < json.len() * 7,
        "packed {} bytes, JSON {} bytes",
        packed.heap_len(),
        json.len()
    );
}

#[test]
fn a_corrupt_form_is_an_error_not_a_panic() {
    let record = full_record();
    let packed = Packed::new(&record, b"");
    for cut in 0..packed.text.len() {
        let Some(text) = packed.text.get(..cut) else {
            continue; // not a char boundary: no str to make
        };
        let broken = Packed { text: text.into() };
        let _ = broken.unpack(b"");
        let _ = broken.write_json(b"", &mut Vec::new());
        let _ = (broken.id(), broken.inn(), broken.data_version());
    }
}
