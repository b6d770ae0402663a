use super::*;
use crate::directory::model::{Kind, Link};
use crate::soap::say_name_payload;

fn records() -> Vec<Counterparty> {
    let full = Counterparty {
        id: "5f1c0e2a-7b3d-11ee-b962-0242ac120002".into(),
        name: "ООО Ромашка".into(),
        full_name: Some("Общество «Ромашка»".into()),
        inn: Some("7707083893".into()),
        kpp: Some("7736-01001".into()),
        ogrn: Some("1027700132195".into()),
        ogrnip: None,
        code: Some("00-000123".into()),
        kind: Some(Kind::Legal),
        category: Some(2),
        manager_phone: Some("301".into()),
        manager_name: Some("Петров".into()),
        manager_source: Some("onec".into()),
        phones: vec!["+7 (495) 123-45-67".into(), "8 916 000 00 11".into()],
        emails: vec!["info@romashka.ru".into()],
        address: Some("Москва".into()),
        links: vec![Link {
            system: "bitrix24".into(),
            kind: "company".into(),
            url: "https://portal.example/crm/company/details/2919/".into(),
        }]
        .into(),
        data_version: Some("AAAAAAAAB+c=".into()),
    };
    vec![
        full.clone(),
        // A name the SOAP answer escapes, and one the cleaning changes.
        Counterparty {
            name: "ИП \"Иванов\" & <сыновья>".into(),
            data_version: None,
            ..full.clone()
        },
        Counterparty {
            name: "Строка\u{2028}с\tразрывом\u{202e}".into(),
            inn: Some("".into()),
            ..full
        },
        Counterparty {
            id: "1".into(),
            name: "Я".into(),
            ..Counterparty::default()
        },
    ]
}

#[test]
fn an_entry_gives_back_the_cleaned_record_and_its_canonical_json() {
    for record in records() {
        let entry = Entry::detached(
            record.clone(),
            "onec",
            say_name_payload,
            None,
            &Default::default(),
        );
        let mut clean = record.clone();
        clean.clean_display_fields();
        assert_eq!(entry.counterparty().expect("reads back"), clean);
        // The JSON the entry kept before it was packed: serde_json's of the
        // cleaned record, its change marker included.
        let json = serde_json::to_string(&clean).expect("serializes");
        assert_eq!(entry.json(), json);
        let mut buf = b"row:".to_vec();
        entry.write_json(&mut buf).expect("writes");
        assert_eq!(buf, [b"row:", json.as_bytes()].concat());
        assert_eq!(entry.id(), &*clean.id);
        assert_eq!(entry.inn(), clean.inn.as_deref().filter(|i| !i.is_empty()));
        assert_eq!(entry.data_version(), clean.data_version.as_deref());
        assert_eq!(&*entry.say_name, &*say_name_payload(&clean));
    }
}

#[test]
fn the_content_hash_is_that_of_the_json_without_the_change_marker() {
    for record in records() {
        let entry = Entry::detached(
            record.clone(),
            "onec",
            say_name_payload,
            None,
            &Default::default(),
        );
        let mut clean = record;
        clean.clean_display_fields();
        clean.data_version = None;
        let json = serde_json::to_string(&clean).expect("serializes");
        assert_eq!(entry.content(), content_hash(json.as_bytes()));
    }
    // Pinned: a hash that moved would make every stored record look changed
    // (new receive times, a sync of everything) after an upgrade.
    let entry = Entry::detached(
        records()[0].clone(),
        "onec",
        say_name_payload,
        None,
        &Default::default(),
    );
    assert_eq!(entry.content(), PINNED_CONTENT);
}

const PINNED_CONTENT: u64 = 14_607_271_143_185_423_036;
