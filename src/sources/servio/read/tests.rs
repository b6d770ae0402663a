use std::path::Path;

use super::*;

const MAPPING: &str = r#"
[[file]]
pattern = "*.xml"
mode = "delta"
record = "/Export/Clients/Client"

[fields]
id = "@Code"
name = "Name"
full_name = "FullName"
inn = "INN"
phones = "Contacts/Phone"
emails = "Contacts/Email"
manager_phone = "Manager/@Ext"
manager_name = "Manager"
category = "Group"
deleted = "@Deleted"
deleted_values = ["1"]

[transforms]
inn = ["digits"]
phones = ["split"]
full_name = ["collapse_spaces"]

[category]
values = { "VIP" = 5 }
"#;

fn mapping() -> Mapping {
    Mapping::parse(MAPPING, Path::new("m.toml")).expect("mapping")
}

fn read(doc: &str) -> Result<Parsed, Vec<Problem>> {
    read_bytes(doc.as_bytes(), Mode::Delta)
}

fn read_bytes(doc: &[u8], mode: Mode) -> Result<Parsed, Vec<Problem>> {
    let mapping = mapping();
    let mut rule = mapping.files[0].clone();
    rule.mode = mode;
    read_records(doc, &rule, &mapping, 100)
}

fn problems(doc: &str) -> Vec<String> {
    read(doc)
        .expect_err("refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn clients(body: &str) -> String {
    format!("<?xml version=\"1.0\"?>\n<Export>\n<Clients>\n{body}</Clients>\n</Export>\n")
}

#[test]
fn paths_attributes_transforms_and_category_fill_a_record() {
    let doc = clients(
        r#"<Client Code="17" xmlns:x="urn:x">
  <Name> АЗС-Транс </Name>
  <FullName>ООО   «АЗС-Транс»
     Север</FullName>
  <INN>77-07 083893</INN>
  <Contacts><Phone>+7 916 555-55-55; 8 (495) 123-45-67</Phone><Phone>2233</Phone><x:Email>a@b.ru</x:Email></Contacts>
  <Manager Ext="204">Иванов</Manager>
  <Group>vip</Group>
  <Unmapped><Deep>ignored</Deep></Unmapped>
</Client>
"#,
    );
    let parsed = read(&doc).expect("reads");
    assert_eq!(parsed.clients, 1);
    let r = &parsed.upserts[0];
    assert_eq!(&*r.id, "servio:17");
    assert_eq!(&*r.name, "АЗС-Транс");
    assert_eq!(r.full_name.as_deref(), Some("ООО «АЗС-Транс» Север"));
    assert_eq!(r.inn.as_deref(), Some("7707083893"));
    assert_eq!(
        r.phones.iter().map(|p| &**p).collect::<Vec<_>>(),
        ["+7 916 555-55-55", "8 (495) 123-45-67", "2233"]
    );
    assert_eq!(r.emails.len(), 1);
    assert_eq!(r.manager_phone.as_deref(), Some("204"));
    assert_eq!(r.manager_name.as_deref(), Some("Иванов"));
    assert_eq!(r.category, Some(5));
    assert!(r.data_version.is_some());
}

#[test]
fn the_change_marker_follows_the_mapped_fields_only() {
    let one = clients("<Client Code=\"1\"><Name>A</Name><Other>x</Other></Client>\n");
    let same = clients("<Client Code=\"1\"><Other>y</Other><Name>A</Name></Client>\n");
    let other = clients("<Client Code=\"1\"><Name>B</Name></Client>\n");
    let marker = |d: &str| read(d).expect("reads").upserts[0].data_version.clone();
    assert_eq!(marker(&one), marker(&same));
    assert_ne!(marker(&one), marker(&other));
}

#[test]
fn deleted_clients_are_removals_in_a_delta_and_absent_in_a_full_file() {
    let doc = clients(
        "<Client Code=\"1\" Deleted=\"1\"/>\n<Client Code=\"2\" Deleted=\"0\"><Name>B</Name></Client>\n",
    );
    let delta = read(&doc).expect("reads");
    assert_eq!(delta.removals, [Box::from("servio:1")]);
    assert_eq!(delta.upserts.len(), 1);
    let full = read_bytes(doc.as_bytes(), Mode::Full).expect("reads");
    assert!(full.removals.is_empty());
    assert_eq!(full.upserts.len(), 1);
}

#[test]
fn windows_1251_files_read() {
    let text = "<?xml version=\"1.0\" encoding=\"windows-1251\"?><Export><Clients><Client Code=\"1\"><Name>Ромашка</Name></Client></Clients></Export>";
    let (bytes, _, _) = encoding_rs::WINDOWS_1251.encode(text);
    let parsed = read_bytes(&bytes, Mode::Delta).expect("reads");
    assert_eq!(&*parsed.upserts[0].name, "Ромашка");
    // The same bytes declared as UTF-8 are refused, naming the line.
    let declared_utf8 = text.replace("windows-1251", "utf-8");
    let (bytes, _, _) = encoding_rs::WINDOWS_1251.encode(&declared_utf8);
    let e = read_bytes(&bytes, Mode::Delta).expect_err("bad bytes");
    assert!(e[0].to_string().contains("not valid UTF-8"), "{}", e[0]);
}

#[test]
fn missing_id_or_name_two_values_and_repeated_ids_are_named() {
    let p = problems(&clients(
        "<Client><Name>A</Name></Client>\n<Client Code=\"2\"/>\n<Client Code=\"3\"><Name>C</Name><INN>1</INN><INN>2</INN></Client>\n<Client Code=\"4\"><Name>D</Name></Client>\n<Client Code=\"4\"><Name>E</Name></Client>\n",
    ));
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p[0].starts_with("line 4, /Export/Clients/Client, field `id`: a client without an id"),
        "{}",
        p[0]
    );
    assert!(
        p[1].starts_with("line 5,") && p[1].contains("field `name`"),
        "{}",
        p[1]
    );
    assert!(
        p[2].starts_with("line 6,")
            && p[2].contains("field `inn`")
            && p[2].contains("second value"),
        "{}",
        p[2]
    );
    assert!(p[3].contains("lines 7 and 8"), "{}", p[3]);
}

#[test]
fn a_record_failing_validate_names_the_field() {
    let long_id = "9".repeat(200);
    let p = problems(&clients(&format!(
        "<Client Code=\"{long_id}\"><Name>A</Name></Client>\n<Client Code=\"2\"><Name>B</Name><Manager Ext=\"boss\"/></Client>\n"
    )));
    assert!(p[0].contains("field `id`"), "{}", p[0]);
    assert!(p[1].contains("field `manager_phone`"), "{}", p[1]);
}

#[test]
fn an_unknown_category_without_a_default_is_refused() {
    let p = problems(&clients(
        "<Client Code=\"1\"><Name>A</Name><Group>Gold</Group></Client>\n",
    ));
    assert!(
        p[0].contains("field `category`") && p[0].contains("Gold"),
        "{}",
        p[0]
    );
    // A number is taken as it is.
    let parsed = read(&clients(
        "<Client Code=\"1\"><Name>A</Name><Group>3</Group></Client>\n",
    ))
    .expect("reads");
    assert_eq!(parsed.upserts[0].category, Some(3));
}

#[test]
fn limits_are_problems_with_their_place() {
    let long = "x".repeat(LIMITS.max_field_bytes + 1);
    let p = problems(&clients(&format!(
        "<Client Code=\"1\"><Name>{long}</Name></Client>\n"
    )));
    assert!(
        p[0].contains("field `name`") && p[0].contains("longer than 4096"),
        "{}",
        p[0]
    );
    let run = "y".repeat(LIMITS.max_run_bytes + 10);
    let p = problems(&clients(&format!(
        "<Client Code=\"1\"><Other>{run}</Other></Client>\n"
    )));
    assert!(p[0].contains("longer than 65536"), "{}", p[0]);
    let deep = format!("{}{}", "<a>".repeat(70), "</a>".repeat(70));
    let p = problems(&clients(&format!("<Client Code=\"1\">{deep}</Client>\n")));
    assert!(p[0].contains("deeper than 64"), "{}", p[0]);
    // Over max_records (100 here).
    let many: String = (0..101)
        .map(|i| format!("<Client Code=\"{i}\"><Name>N</Name></Client>\n"))
        .collect();
    let p = problems(&clients(&many));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("max_records = 100"), "{}", p[0]);
}

#[test]
fn hostile_and_broken_xml_is_refused() {
    for (doc, expected) in [
        (
            "<?xml version=\"1.0\"?>\n<!DOCTYPE x [<!ENTITY a \"b\">]>\n<Export/>".to_owned(),
            "line 2: DTDs",
        ),
        (
            clients("<Client Code=\"1\"><Name>&bad;</Name></Client>\n"),
            "unknown entity",
        ),
        (
            clients("<Client Code=\"1\"><Name>A</Nam></Client>\n"),
            "line 4",
        ),
        (
            clients("<Client Code=\"1\"><Name>A</Name>")
                .split("</Clients>")
                .next()
                .unwrap_or_default()
                .to_owned(),
            "ends before",
        ),
        (
            "<?xml version=\"1.0\" encoding=\"KOI8-R\"?><Export/>".to_owned(),
            "'KOI8-R' is not supported",
        ),
    ] {
        let p = problems(&doc);
        assert!(p[0].contains(expected), "{doc}: {p:?}");
    }
}

#[test]
fn problems_stop_at_twenty() {
    let bad: String = (0..50)
        .map(|_| "<Client><Name>A</Name></Client>\n")
        .collect();
    assert_eq!(problems(&clients(&bad)).len(), MAX_PROBLEMS);
}

#[test]
fn a_file_of_no_clients_reads_as_none() {
    let parsed = read(&clients("")).expect("reads");
    assert_eq!(parsed.clients, 0);
}
