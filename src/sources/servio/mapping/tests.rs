use super::*;

const GOOD: &str = r#"
[[file]]
pattern = "Clients_*.xml"
mode = "full"
encoding = "windows-1251"
record = "/Export/Clients/s:Client"

[[file]]
pattern = "Changes_*.xml"
mode = "delta"
record = "/Export/Clients/Client"

[fields]
id = "@Code"
name = "Name"
inn = "Requisites/INN"
phones = "Contacts/Phone"
manager_phone = "Manager/@Ext"
category = "Group"
deleted = "@Deleted"
deleted_values = ["1", "True"]

[transforms]
inn = ["digits"]
phones = ["split", "collapse_spaces"]

[category]
values = { "VIP" = 1, "Обычный" = 0 }
default = 0
"#;

fn parse(text: &str) -> Result<Mapping, MappingError> {
    Mapping::parse(text, Path::new("/etc/cti/servio.toml"))
}

fn problem(text: &str) -> String {
    parse(text).expect_err("refused").to_string()
}

#[test]
fn a_documented_mapping_reads() {
    let m = parse(GOOD).expect("reads");
    assert_eq!(m.files.len(), 2);
    assert_eq!(m.files[0].record, "/Export/Clients/Client");
    assert_eq!(
        m.files[0].encoding,
        EncodingChoice::Given(crate::xml::Encoding::Windows1251)
    );
    assert_eq!(m.files[1].encoding, EncodingChoice::Auto);
    assert_eq!(m.files[1].mode, Mode::Delta);
    let path = |f: Field| {
        m.fields
            .iter()
            .find(|(x, _)| *x == f)
            .map(|(_, p)| p.clone())
    };
    assert_eq!(
        path(Field::Id),
        Some(FieldPath {
            element: String::new(),
            attribute: Some("Code".into())
        })
    );
    assert_eq!(
        path(Field::ManagerPhone),
        Some(FieldPath {
            element: "/Manager".into(),
            attribute: Some("Ext".into())
        })
    );
    assert_eq!(
        path(Field::Inn).map(|p| p.element),
        Some("/Requisites/INN".into())
    );
    assert_eq!(m.deleted_values, ["1", "true"]);
    assert_eq!(m.category_values.get("обычный"), Some(&0));
    assert_eq!(
        m.rule_for("clients_2026.XML").map(|r| r.mode),
        Some(Mode::Full)
    );
    assert_eq!(
        m.rule_for("Changes_1.xml").map(|r| r.mode),
        Some(Mode::Delta)
    );
    assert!(m.rule_for("other.xml").is_none());
}

#[test]
fn the_shipped_example_reads() {
    let text = include_str!("../../../../config/servio-mapping.example.toml");
    parse(text).expect("config/servio-mapping.example.toml must read");
}

#[test]
fn unknown_keys_are_named_with_the_file() {
    let e = problem(&GOOD.replace("[fields]\n", "[fields]\nnmae = \"X\"\n"));
    assert!(
        e.contains("/etc/cti/servio.toml") && e.contains("nmae"),
        "{e}"
    );
    let e = problem(&GOOD.replace("mode = \"delta\"", "mode = \"delta\"\nfolder = \"x\""));
    assert!(e.contains("folder"), "{e}");
}

#[test]
fn bad_values_are_named_by_key() {
    for (from, to, key) in [
        ("mode = \"full\"", "mode = \"all\"", "all"),
        (
            "encoding = \"windows-1251\"",
            "encoding = \"koi8-r\"",
            "file[0].encoding",
        ),
        (
            "record = \"/Export/Clients/s:Client\"",
            "record = \"Export/Client\"",
            "file[0].record",
        ),
        (
            "record = \"/Export/Clients/s:Client\"",
            "record = \"/Export/@Client\"",
            "file[0].record",
        ),
        (
            "pattern = \"Clients_*.xml\"",
            "pattern = \"in/Clients.xml\"",
            "file[0].pattern",
        ),
        (
            "pattern = \"Clients_*.xml\"",
            "pattern = \"[ab].xml\"",
            "file[0].pattern",
        ),
        ("name = \"Name\"", "name = \"Name[1]\"", "fields.name"),
        ("name = \"Name\"", "name = \"/Name\"", "fields.name"),
        ("name = \"Name\"", "name = \"@A/B\"", "fields.name"),
        ("name = \"Name\"", "name = \"A//B\"", "fields.name"),
        ("inn = [\"digits\"]", "inn = [\"upper\"]", "upper"),
        ("inn = [\"digits\"]", "inn = [\"split\"]", "transforms.inn"),
        ("inn = [\"digits\"]", "kpp = [\"digits\"]", "transforms.kpp"),
        (
            "deleted_values = [\"1\", \"True\"]",
            "deleted_values = []",
            "fields.deleted_values",
        ),
    ] {
        assert!(GOOD.contains(from), "{from}");
        let e = problem(&GOOD.replace(from, to));
        assert!(e.contains(key), "{to}: {e}");
        assert!(e.contains("servio.toml"), "{e}");
    }
    let e = problem("[fields]\nid = \"@Code\"\nname = \"Name\"\nfile = []\n");
    assert!(e.contains("file"), "{e}");
    assert!(problem(&GOOD.replace("id = \"@Code\"\n", "")).contains("id"));
}

#[test]
fn globs() {
    assert!(glob_matches("*.xml", "a.xml"));
    assert!(glob_matches("*.xml", ".xml"));
    assert!(glob_matches("C?ients*.XML", "clients_2026-01-01.xml"));
    assert!(glob_matches("*", "anything"));
    assert!(glob_matches("a*b*c", "aXXbYYbZc"));
    assert!(!glob_matches("a*b*c", "aXXbYYbZ"));
    assert!(!glob_matches("*.xml", "a.xml.part"));
    assert!(glob_matches("Клиенты*.xml", "КЛИЕНТЫ_1.xml"));
}
