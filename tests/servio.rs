//! The SERVIO source over a real gateway: sample files (both encodings)
//! reach the directory through the mapping and answer SayName; each file is
//! applied once (re-drops, renames, restarts); a broken file goes to
//! `error_dir` with its `.error.txt`, changes nothing, and `/readyz` names
//! it (file, line) among the failing sources until a good file applies. Scans are driven by `Gateway::reload()`
//! (`servio.poll = "0s"`).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::Gateway;
use support::mock_onec::{guid, MockCounterparty, MockOnec};
use support::*;

const WITHIN: Duration = Duration::from_secs(20);
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/servio");

fn sample(name: &str) -> PathBuf {
    Path::new(SAMPLES).join(name)
}

/// `[servio]` for a gateway in `dir`, folders under it.
fn servio_table(dir: &Path, take: &str) -> String {
    format!(
        "[servio]\nimport_dir = \"{}\"\narchive_dir = \"{}\"\nerror_dir = \"{}\"\nmapping = \"{}\"\npoll = \"0s\"\nsettle = \"0s\"\ntake = \"{take}\"\n",
        dir.join("in").display(),
        dir.join("archive").display(),
        dir.join("errors").display(),
        sample("mapping.toml").display(),
    )
}

async fn start_servio(dir: tempfile::TempDir, take: &str) -> TestGateway {
    start_servio_with(dir, take, "").await
}

/// [`start_servio`] with `extra` after `[servio]`'s keys: more of its keys,
/// then other tables.
async fn start_servio_with(dir: tempfile::TempDir, take: &str, extra: &str) -> TestGateway {
    std::fs::create_dir_all(dir.path().join("in")).expect("import dir");
    if !dir.path().join("counterparties.jsonl").exists() {
        std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    }
    let table = format!("{}{extra}", servio_table(dir.path(), take));
    let text = config_text(dir.path(), &table);
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None)
        .expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

fn drop_file(gw: &TestGateway, sample_name: &str, as_name: &str) {
    std::fs::copy(sample(sample_name), gw.dir.path().join("in").join(as_name)).expect("drop");
}

fn name_of(gw: &TestGateway, id: &str) -> Option<String> {
    let entry = gw.gateway().directory().lookup_id(id)?;
    Some(entry.counterparty().expect("entry parses").name.into())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn readyz(gw: &TestGateway) -> (u16, serde_json::Value) {
    let reply = get(gw.addr, "/readyz").await;
    let doc = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", reply.body));
    (reply.status, doc)
}

async fn say_name(gw: &TestGateway, number: &str) -> String {
    let reply = soap(gw.addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    say_name_data(&reply)
}

/// Waits until `import_dir` is empty (every dropped file taken).
async fn taken(gw: &TestGateway) {
    let import = gw.dir.path().join("in");
    eventually(WITHIN, "import_dir emptied", || {
        files_in(&import).is_empty()
    })
    .await;
}

#[tokio::test]
async fn utf8_and_windows_1251_samples_answer_with_name_category_and_manager() {
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    drop_file(&gw, "Clients_full.utf8.xml", "Clients_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "full file applied", || {
        name_of(&gw, "servio:1001").is_some()
    })
    .await;
    let data = say_name(&gw, "89131001002").await;
    assert_eq!(element_text(&data, "title"), Some("АЗС-Транс"), "{data}");
    assert_eq!(element_text(&data, "category"), Some("2"), "{data}");
    assert!(data.contains("<phone>245</phone>"), "{data}");
    assert_eq!(name_of(&gw, "servio:1002").as_deref(), Some("Топливо & Ко"));
    drop_file(&gw, "Changes_a.cp1251.xml", "Changes_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "cp1251 delta applied", || {
        name_of(&gw, "servio:2001").is_some()
    })
    .await;
    let data = say_name(&gw, "+79132000001").await;
    assert_eq!(element_text(&data, "title"), Some("Ромашка-Ойл"), "{data}");
    assert!(data.contains("<phone>246</phone>"), "{data}");
    taken(&gw).await;
    let archived = files_in(&gw.dir.path().join("archive"));
    assert_eq!(archived.len(), 2, "{archived:?}");
    assert!(archived
        .iter()
        .all(|n| n.ends_with("-Clients_1.xml") || n.ends_with("-Changes_1.xml")));
    // The other sources' records stay.
    assert!(name_of(&gw, "a1").is_some());
    let (status, doc) = readyz(&gw).await;
    assert_eq!(status, 200, "{doc}");
    gw.stop().await;
}

#[tokio::test]
async fn the_same_bytes_renamed_are_a_duplicate_and_deltas_apply_in_order() {
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    drop_file(&gw, "Changes_a.cp1251.xml", "Changes_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "A applied", || {
        name_of(&gw, "servio:2001").is_some()
    })
    .await;
    taken(&gw).await;
    drop_file(&gw, "Changes_b.utf8.xml", "Changes_2.xml");
    gw.gateway().reload();
    eventually(WITHIN, "B applied", || {
        name_of(&gw, "servio:2001").as_deref() == Some("Ромашка-Ойл Север")
    })
    .await;
    taken(&gw).await;
    // A again, renamed: the same bytes, never applied again.
    drop_file(&gw, "Changes_a.cp1251.xml", "Changes_3.xml");
    gw.gateway().reload();
    taken(&gw).await;
    assert_eq!(
        name_of(&gw, "servio:2001").as_deref(),
        Some("Ромашка-Ойл Север")
    );
    assert_eq!(files_in(&gw.dir.path().join("archive")).len(), 3);
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn broken_files_go_to_error_dir_change_nothing_and_fail_readyz_until_a_good_one() {
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    drop_file(&gw, "Clients_full.utf8.xml", "Clients_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "full file applied", || {
        name_of(&gw, "servio:1001").is_some()
    })
    .await;
    taken(&gw).await;
    for (broken, expected) in [
        ("broken_malformed.xml", "line 6"),
        ("broken_doctype.xml", "DTDs"),
        ("broken_no_id.xml", "line 5"),
        ("broken_koi8.xml", "KOI8-R"),
    ] {
        drop_file(&gw, broken, "Changes_9.xml");
        gw.gateway().reload();
        taken(&gw).await;
        let errors = gw.dir.path().join("errors");
        let texts: Vec<String> = files_in(&errors)
            .into_iter()
            .filter(|n| n.ends_with("-Changes_9.xml.error.txt"))
            .collect();
        let text = std::fs::read_to_string(errors.join(texts.last().expect("an .error.txt")))
            .expect("read");
        assert!(text.contains(expected), "{broken}: {text}");
        for t in texts {
            std::fs::remove_file(errors.join(t)).expect("clean");
        }
        // Still ready (the directory serves), the source named failing.
        let (_, doc) = readyz(&gw).await;
        assert_eq!(
            doc["failing_sources"],
            serde_json::json!(["servio"]),
            "{doc}"
        );
        let error = doc["sources"]["servio"]["last_error"].to_string();
        assert!(
            error.contains("Changes_9.xml") && error.contains(expected),
            "{broken}: {doc}"
        );
        // Nothing changed.
        assert!(name_of(&gw, "servio:1001").is_some());
        assert!(name_of(&gw, "servio:3001").is_none());
    }
    drop_file(&gw, "Changes_a.cp1251.xml", "Changes_10.xml");
    gw.gateway().reload();
    eventually(WITHIN, "good file applied", || {
        name_of(&gw, "servio:2001").is_some()
    })
    .await;
    taken(&gw).await;
    let (status, doc) = readyz(&gw).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["sources"]["servio"]["state"], "ok", "{doc}");
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_with_an_empty_import_dir_answers_from_the_snapshot() {
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    drop_file(&gw, "Clients_full.utf8.xml", "Clients_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "full file applied", || {
        name_of(&gw, "servio:1001").is_some()
    })
    .await;
    taken(&gw).await;
    gw.stop().await;
    let dir = gw.dir;
    let gw = start_servio(dir, "move").await;
    assert_eq!(name_of(&gw, "servio:1001").as_deref(), Some("АЗС-Транс"));
    let data = say_name(&gw, "89131001001").await;
    assert_eq!(element_text(&data, "title"), Some("АЗС-Транс"), "{data}");
}

#[tokio::test]
async fn take_leave_on_a_read_only_folder_applies_once_and_moves_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let import = dir.path().join("in");
    std::fs::create_dir_all(&import).expect("import dir");
    std::fs::copy(
        sample("Clients_full.utf8.xml"),
        import.join("Clients_1.xml"),
    )
    .expect("drop");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&import, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut gw = start_servio(dir, "leave").await;
    eventually(WITHIN, "applied", || name_of(&gw, "servio:1001").is_some()).await;
    for _ in 0..3 {
        gw.gateway().reload();
    }
    let archive = gw.dir.path().join("archive");
    eventually(WITHIN, "copied once", || files_in(&archive).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_in(&import), ["Clients_1.xml"]);
    assert_eq!(files_in(&archive).len(), 1, "{:?}", files_in(&archive));
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cti_servio_files_total{outcome=\"duplicate\"}"),
        "not hashed again: {metrics}"
    );
    std::fs::set_permissions(&import, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    gw.stop().await;
}

/// A delta file of `n` clients, ids `prefix-0`…, each with its own phone.
fn delta_file(prefix: u32, n: u32) -> String {
    let mut text =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Export>\n<Clients>\n");
    for i in 0..n {
        text.push_str(&format!(
            "<Client Code=\"{prefix}-{i}\"><Name>Клиент {prefix}-{i}</Name><Contacts><Phone>+7 913 {prefix:03}-{:02}-{:02}</Phone></Contacts><Group>VIP</Group></Client>\n",
            i / 100,
            i % 100
        ));
    }
    text.push_str("</Clients>\n</Export>\n");
    text
}

#[tokio::test]
async fn a_gateway_killed_three_times_mid_import_applies_each_file_once() {
    use support::process::{free_port, serve_command, Child};
    const FILES: u32 = 6;
    const CLIENTS: u32 = 3_000;
    let dir = tempfile::tempdir().expect("dir");
    let import = dir.path().join("in");
    std::fs::create_dir_all(&import).expect("import dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    for f in 0..FILES {
        std::fs::write(
            import.join(format!("Changes_{f}.xml")),
            delta_file(100 + f, CLIENTS),
        )
        .expect("file");
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: std::net::SocketAddr = listen.parse().expect("addr");
    let table = servio_table(dir.path(), "move").replace("poll = \"0s\"", "poll = \"1s\"");
    let text = config_text_on(dir.path(), &listen, &table);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).expect("config");
    let log = dir.path().join("gateway.log");
    for cycle in 0..3u64 {
        let child = Child::start(serve_command(&config, &log), addr, "/healthz").await;
        // Mid-import: the first scan starts at once.
        tokio::time::sleep(Duration::from_millis(150 + 250 * cycle)).await;
        drop(child); // SIGKILL
    }
    let child = Child::start(serve_command(&config, &log), addr, "/healthz").await;
    eventually(Duration::from_secs(60), "every file taken", || {
        files_in(&import).is_empty()
    })
    .await;
    child.stop().await;
    // Each file once: archived once, one applied ledger row per file's bytes.
    assert_eq!(files_in(&dir.path().join("archive")).len(), FILES as usize);
    assert!(files_in(&dir.path().join("errors")).is_empty());
    let db = rusqlite::Connection::open(dir.path().join("store.servio.sqlite")).expect("open");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let (rows, applied, records): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), sum(outcome = 'applied'), sum(records) FROM servio_files",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("ledger");
    assert_eq!((rows, applied), (i64::from(FILES), i64::from(FILES)));
    assert_eq!(records, i64::from(FILES * CLIENTS));
    let stored: i64 = db
        .query_row(
            "SELECT count(*) FROM counterparties WHERE source = 'servio'",
            [],
            |r| r.get(0),
        )
        .expect("snapshot");
    assert_eq!(stored, i64::from(FILES * CLIENTS));
    // And a gateway started on it answers every client.
    let gw = start_servio(dir, "move").await;
    for f in 0..FILES {
        assert!(name_of(&gw, &format!("servio:{}-{}", 100 + f, CLIENTS - 1)).is_some());
    }
}

#[tokio::test]
async fn a_bad_mapping_stops_check_config_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let mapping = dir.path().join("servio-mapping.toml");
    let text = std::fs::read_to_string(sample("mapping.toml"))
        .expect("sample mapping")
        .replace("[fields]\n", "[fields]\nnmae = \"Name\"\n");
    std::fs::write(&mapping, text).expect("mapping");
    let table = servio_table(dir.path(), "move").replace(
        &sample("mapping.toml").display().to_string(),
        &mapping.display().to_string(),
    );
    let out = support::process::check_config(
        &dir.path().join("gateway.toml"),
        &config_text(dir.path(), &table),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("servio-mapping.toml") && stderr.contains("nmae"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_missing_import_dir_is_a_failing_source_not_a_start_up_error() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let text = config_text(dir.path(), &servio_table(dir.path(), "move"));
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None)
        .expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let mut gw = TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    };
    let mut doc = serde_json::Value::Null;
    for _ in 0..200 {
        doc = readyz(&gw).await.1;
        if doc["failing_sources"] == serde_json::json!(["servio"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = doc["sources"]["servio"]["last_error"].to_string();
    assert!(error.contains("servio.import_dir"), "{doc}");
    // Once the folder exists, the next scan works.
    std::fs::create_dir_all(gw.dir.path().join("in")).expect("import dir");
    drop_file(&gw, "Clients_full.utf8.xml", "Clients_1.xml");
    gw.gateway().reload();
    eventually(WITHIN, "applied", || name_of(&gw, "servio:1001").is_some()).await;
    gw.stop().await;
}

#[tokio::test]
async fn with_a_ready_marker_a_file_waits_for_its_marker() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("in")).expect("import dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let table = format!(
        "{}ready_marker = \"{{name}}.ok\"\n",
        servio_table(dir.path(), "move")
    );
    let text = config_text(dir.path(), &table);
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None)
        .expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let mut gw = TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    };
    drop_file(&gw, "Clients_full.utf8.xml", "Clients_1.xml");
    gw.gateway().reload();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        name_of(&gw, "servio:1001").is_none(),
        "taken before its marker"
    );
    let import = gw.dir.path().join("in");
    std::fs::write(import.join("Clients_1.xml.ok"), "").expect("marker");
    gw.gateway().reload();
    eventually(WITHIN, "taken with its marker", || {
        name_of(&gw, "servio:1001").is_some()
    })
    .await;
    taken(&gw).await;
    gw.stop().await;
}

// ------------------------------------------------- the manager by INN (item 6)

/// `[onec]` over the mock 1C: its extension field, read once at start and
/// again on each `Gateway::reload()`.
fn onec_table(mock: &MockOnec) -> String {
    format!(
        "\n[onec]\nodata_url = \"{}\"\nusername = \"odata\"\npassword = \"{}\"\nrefresh = \"1h\"\nlookup_budget_ms = 300\nmanager_phone_field = \"ДобавочныйМенеджера\"\ntimeout = \"2s\"\n",
        mock.url(),
        support::mock_onec::PASSWORD
    )
}

/// A 1C client with this INN and manager's extension.
fn onec_client(n: u64, inn: &str, extension: &str, phone: &str) -> MockCounterparty {
    MockCounterparty::new(guid(n), format!("ООО Клиент {n}"))
        .inn(inn, "770101001")
        .extra("ДобавочныйМенеджера", extension)
        .phone(format!("+{phone}"), phone)
}

/// SERVIO's drivers: D1 under 1C client 1's INN without a manager, D2 under
/// it with its own (250), D3 under the INN two 1C clients share with
/// different managers, D4 under an INN 1C does not have.
const DRIVERS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Export>
<Clients>
<Client Code="D1"><Name>Водитель 1</Name><INN>7701000001</INN><Contacts><Phone>+7 913 300-00-01</Phone></Contacts></Client>
<Client Code="D2"><Name>Водитель 2</Name><INN>7701000001</INN><Contacts><Phone>+7 913 300-00-02</Phone></Contacts><Manager Ext="250">Свой</Manager></Client>
<Client Code="D3"><Name>Водитель 3</Name><INN>7703000003</INN><Contacts><Phone>+7 913 300-00-03</Phone></Contacts></Client>
<Client Code="D4"><Name>Водитель 4</Name><INN>7704000004</INN><Contacts><Phone>+7 913 300-00-04</Phone></Contacts></Client>
</Clients>
</Export>
"#;

/// A gateway over the mock 1C (clients 1; 2 and 3 sharing an INN) with
/// SERVIO's drivers applied; `servio_keys` are more `[servio]` keys.
async fn drivers_and_1c(servio_keys: &str) -> (TestGateway, MockOnec) {
    let mock = MockOnec::start().await;
    mock.upsert(onec_client(1, "7701000001", "244", "79250000001"));
    mock.upsert(onec_client(2, "7703000003", "301", "79250000002"));
    mock.upsert(onec_client(3, "7703000003", "302", "79250000003"));
    let extra = format!("{servio_keys}{}", onec_table(&mock));
    let gw = start_servio_with(tempfile::tempdir().expect("dir"), "move", &extra).await;
    eventually(WITHIN, "1C read", || {
        gw.gateway().directory().lookup_id(&guid(3)).is_some()
    })
    .await;
    std::fs::write(
        gw.dir.path().join("in").join("Changes_drivers.xml"),
        DRIVERS,
    )
    .expect("drop");
    gw.gateway().reload();
    eventually(WITHIN, "drivers applied", || {
        name_of(&gw, "servio:D4").is_some()
    })
    .await;
    (gw, mock)
}

/// The extension SayName routes `number` to.
async fn routed(gw: &TestGateway, number: &str) -> String {
    let data = say_name(gw, number).await;
    let phone = element_text(&data, "phone").unwrap_or_default().to_owned();
    assert!(data.contains("Водитель"), "{data}");
    phone
}

#[tokio::test]
async fn manager_from_inn_routes_a_driver_to_the_1c_clients_manager_and_follows_its_change() {
    let (mut gw, mock) = drivers_and_1c("default_manager_phone = \"200\"\n").await;
    assert_eq!(routed(&gw, "89133000001").await, "244");
    // A mapped manager wins over both.
    assert_eq!(routed(&gw, "89133000002").await, "250");
    // Two 1C clients with the INN and different managers: the default.
    assert_eq!(routed(&gw, "89133000003").await, "200");
    // No 1C client with the INN: the default.
    assert_eq!(routed(&gw, "89133000004").await, "200");
    // Nothing of it is stored in SERVIO's record.
    let d1 = gw.gateway().directory().lookup_id("servio:D1").expect("D1");
    assert!(d1.counterparty().expect("D1").manager_phone.is_none());
    // The operator's pop-up shows the manager the call goes to.
    let mut screen = gw
        .gateway()
        .hub()
        .subscribe(OPERATOR_KEY, None)
        .expect("known key");
    let reply = soap(
        gw.addr,
        &incoming_call_envelope("89133000001", OPERATOR_KEY),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let message = tokio::time::timeout(Duration::from_secs(5), screen.recv())
        .await
        .expect("pop-up within 5 s")
        .expect("subscription open");
    let json: serde_json::Value = serde_json::from_str(&message.json).expect("json");
    assert_eq!(json["counterparty"]["id"], "servio:D1", "{json}");
    assert_eq!(json["counterparty"]["manager_phone"], "244", "{json}");
    assert_eq!(json["counterparty"]["manager_source"], "onec", "{json}");
    // 1C's client gets another manager: after 1C's refresh the driver's
    // calls follow, without any SERVIO file.
    mock.upsert(onec_client(1, "7701000001", "247", "79250000001"));
    gw.gateway().reload();
    let mut now = String::new();
    for _ in 0..400 {
        now = routed(&gw, "89133000001").await;
        if now == "247" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, "247", "the new manager after 1C's refresh");
    assert!(files_in(&gw.dir.path().join("archive")).len() == 1);
    gw.stop().await;
}

#[tokio::test]
async fn without_manager_from_inn_a_driver_goes_to_the_default_and_its_own_wins() {
    let (mut gw, _mock) =
        drivers_and_1c("manager_from_inn = false\ndefault_manager_phone = \"200\"\n").await;
    assert_eq!(routed(&gw, "89133000001").await, "200");
    assert_eq!(routed(&gw, "89133000002").await, "250");
    gw.stop().await;
    // Neither rule: no manager.
    let (mut gw, _mock) = drivers_and_1c("manager_from_inn = false\n").await;
    assert_eq!(routed(&gw, "89133000001").await, "");
    gw.stop().await;
}

// ------------------------------------------------- the ledger's identities

/// A sparse file of `size` bytes (no disk taken) starting with `head`.
fn sparse_file(path: &Path, size: u64, head: &[u8]) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(head).expect("head");
    file.set_len(size).expect("set_len");
}

#[tokio::test]
async fn an_oversized_file_is_known_again_by_its_bytes_across_a_restart_not_by_its_name() {
    const OVER: u64 = 512 * 1024 * 1024 + 1;
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    let import = gw.dir.path().join("in");
    sparse_file(
        &import.join("Changes_big.xml"),
        OVER,
        b"<?xml version=\"1.0\"?>",
    );
    gw.gateway().reload();
    taken(&gw).await;
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
    let mut gw = start_servio(gw.dir, "move").await;
    let import = gw.dir.path().join("in");
    // The same bytes again, under another name (another mtime too).
    sparse_file(
        &import.join("Changes_big2.xml"),
        OVER,
        b"<?xml version=\"1.0\"?>",
    );
    gw.gateway().reload();
    taken(&gw).await;
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("cti_servio_files_total{outcome=\"failed\"}"),
        "{metrics}"
    );
    // Other bytes under the first name: a file of its own, refused.
    sparse_file(
        &import.join("Changes_big.xml"),
        OVER,
        b"<?xml version='1.0'?>",
    );
    gw.gateway().reload();
    taken(&gw).await;
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
    let db = rusqlite::Connection::open(gw.dir.path().join("store.servio.sqlite")).expect("open");
    let keys: Vec<String> = db
        .prepare("SELECT hash FROM servio_files ORDER BY at")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("sample:")), "{keys:?}");
    let errors = files_in(&gw.dir.path().join("errors"));
    assert_eq!(
        errors.iter().filter(|n| n.ends_with(".error.txt")).count(),
        3,
        "{errors:?}"
    );
}

#[tokio::test]
async fn take_leave_remembers_a_duplicate_left_in_place_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let import = dir.path().join("in");
    std::fs::create_dir_all(&import).expect("import dir");
    std::fs::copy(
        sample("Clients_full.utf8.xml"),
        import.join("Clients_1.xml"),
    )
    .expect("drop");
    std::fs::copy(
        sample("Clients_full.utf8.xml"),
        import.join("Clients_2.xml"),
    )
    .expect("drop");
    let mut gw = start_servio(dir, "leave").await;
    let archive = gw.dir.path().join("archive");
    eventually(WITHIN, "applied", || name_of(&gw, "servio:1001").is_some()).await;
    eventually(WITHIN, "copied once", || files_in(&archive).len() == 1).await;
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = get(gw.addr, "/metrics").await.body;
        if metrics.contains("cti_servio_files_total{outcome=\"duplicate\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("cti_servio_files_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
    // A new process: neither file is hashed again.
    let mut gw = start_servio(gw.dir, "leave").await;
    for _ in 0..3 {
        gw.gateway().reload();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        !metrics.contains("cti_servio_files_total{outcome=")
            && !metrics.contains("cti_servio_file_seconds_count{stage=\"hash\"}"),
        "nothing hashed, applied or counted again: {metrics}"
    );
    assert_eq!(files_in(&import), ["Clients_1.xml", "Clients_2.xml"]);
    assert_eq!(files_in(&archive).len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_file_emptying_or_shrinking_servio_past_max_shrink_is_refused() {
    let mut gw = start_servio(tempfile::tempdir().expect("dir"), "move").await;
    let import = gw.dir.path().join("in");
    let fingerprint = |gw: &TestGateway| {
        let index = gw.gateway().directory().snapshot();
        let info = index.source("servio").expect("servio's set");
        (
            info.records,
            info.fingerprint.clone().expect("a fingerprint"),
        )
    };
    std::fs::write(import.join("Clients_1.xml"), delta_file(100, 10)).expect("drop");
    gw.gateway().reload();
    taken(&gw).await;
    let (records, first) = fingerprint(&gw);
    assert_eq!(records, 10);
    assert_eq!(first.len(), 64, "the file's SHA-256: {first}");
    // 6 of the 10 gone is more than directory.max_shrink (0.5); no client
    // at all would empty SERVIO's part: both refused, nothing changed.
    for (file, n, expected) in [
        ("Clients_2.xml", 4, "directory.max_shrink"),
        ("Clients_3.xml", 0, "no clients"),
    ] {
        std::fs::write(import.join(file), delta_file(100, n)).expect("drop");
        gw.gateway().reload();
        taken(&gw).await;
        let errors = gw.dir.path().join("errors");
        let text = files_in(&errors)
            .into_iter()
            .find(|n| n.ends_with(&format!("-{file}.error.txt")))
            .map(|n| std::fs::read_to_string(errors.join(n)).expect("read"))
            .unwrap_or_else(|| panic!("{file}: no .error.txt"));
        assert!(text.contains(expected), "{file}: {text}");
        assert_eq!(fingerprint(&gw), (10, first.clone()), "{file}");
        assert!(name_of(&gw, "servio:100-9").is_some(), "{file}");
    }
    // 4 of the 10 gone is within it: applied, the absent clients leave.
    std::fs::write(import.join("Clients_4.xml"), delta_file(100, 6)).expect("drop");
    gw.gateway().reload();
    taken(&gw).await;
    let (records, fourth) = fingerprint(&gw);
    assert_eq!(records, 6);
    assert_ne!(fourth, first);
    assert!(name_of(&gw, "servio:100-5").is_some());
    assert!(name_of(&gw, "servio:100-6").is_none());
    gw.stop().await;
}
