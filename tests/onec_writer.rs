//! The 1C writer (issue 19) over a real gateway and the mock 1C on
//! loopback: a record of the directory file that 1C lacks is created there
//! once (searched by INN first), adopted when 1C has it, refused when 1C
//! has it twice; an update keeps 1C's contact rows; the bank account by
//! BIK; each class of 1C's refusals; a write 1C committed but never
//! answered, and a gateway killed with SIGKILL, create nothing twice.

mod support;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use cti_gateway::store::{ConflictQuery, OutboxQuery, OutboxRow, OutboxState, Store};
use serde_json::json;
use support::mock_onec::{
    guid, MockCounterparty, MockOnec, Mode, WriteFault, BANK_ACCOUNTS, COUNTERPARTIES,
    EMAIL_KIND_KEY, PASSWORD, PHONE_KIND_KEY, USERNAME, WRITE_PASSWORD, WRITE_USERNAME,
};
use support::*;

const SYSTEM: &str = "onec";
const KIND: &str = "counterparty";
const INN: &str = "7707083893";
const KPP: &str = "773601001";

/// One company 1C lacks: a phone and an e-mail.
fn romashka(name: &str) -> String {
    format!(
        "{}\n",
        json!({"id": "k1", "name": name, "inn": INN, "kpp": KPP,
               "phones": ["+7 (495) 111-00-01"], "emails": ["info@romashka.example"]})
    )
}

/// `[onec]` on the mock and `[sync.onec]` with the write user given; quick
/// retries, a long block probe (a blocked writer stays blocked).
fn tables(mock: &MockOnec, user: &str, password: &str, extra: &str) -> String {
    format!(
        r#"
[onec]
odata_url = "{url}"
username = "{USERNAME}"
password = "{PASSWORD}"
refresh = "1h"
timeout = "2s"
[sync.onec]
write_username = "{user}"
write_password = "{password}"
per_second = 100
retry_first = "50ms"
retry_max = "200ms"
timeout = "1s"
block_probe = "1h"
{extra}
"#,
        url = mock.url()
    )
}

fn writer_tables(mock: &MockOnec) -> String {
    tables(mock, WRITE_USERNAME, WRITE_PASSWORD, "")
}

/// Polls `cond` every 50 ms until it holds; panics after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sync_store(gw: &TestGateway) -> Store {
    gw.gateway().sync_store().expect("a sync store").clone()
}

async fn linked(store: &Store, key: &str) -> Option<String> {
    store
        .idmap_get(SYSTEM, KIND, key)
        .await
        .ok()
        .flatten()
        .filter(|row| row.closed_at.is_none())
        .and_then(|row| row.remote_id)
}

async fn rows(store: &Store, state: OutboxState) -> Vec<OutboxRow> {
    store
        .outbox_page(OutboxQuery {
            system: Some(SYSTEM.into()),
            state: Some(state),
            after: None,
            limit: 100,
        })
        .await
        .expect("outbox")
}

async fn dead(store: &Store) -> Vec<OutboxRow> {
    rows(store, OutboxState::Dead).await
}

fn creates(mock: &MockOnec) -> usize {
    mock.writes()
        .iter()
        .filter(|r| r.method == "POST" && r.entity_set.as_deref() == Some(COUNTERPARTIES))
        .count()
}

/// The `status`/`reason` of the writer in `GET /api/v1/sync/status`.
async fn writer_status(gw: &TestGateway) -> serde_json::Value {
    let reply = request(
        gw.addr,
        "GET",
        "/api/v1/sync/status",
        &["Authorization: Bearer api-token-for-tests"],
        b"",
    )
    .await;
    let all: serde_json::Value = serde_json::from_str(&reply.body).expect("status JSON");
    all["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == SYSTEM).cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_record_1c_lacks_is_created_once_and_1c_s_echo_sends_nothing() {
    let mock = MockOnec::start_for_writes().await;
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "k1 linked to 1C", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    let all = mock.counterparties();
    assert_eq!(all.len(), 1, "{all:?}");
    let (created, _code, _) = &all[0];
    assert_eq!(
        linked(&store, "k1").await.as_deref(),
        Some(created.ref_key.as_str())
    );
    assert_eq!(
        (
            created.description.as_str(),
            created.inn.as_str(),
            created.kpp.as_str()
        ),
        ("Ромашка", INN, KPP)
    );
    assert_eq!(
        created.extra.get("ЮридическоеФизическоеЛицо"),
        Some(&json!("ЮридическоеЛицо"))
    );
    let contacts: Vec<(&str, &str, Option<&str>)> = created
        .contacts
        .iter()
        .map(|c| (c.kind, c.presentation.as_str(), c.kind_key.as_deref()))
        .collect();
    assert_eq!(
        contacts,
        [
            ("Телефон", "+7 (495) 111-00-01", Some(PHONE_KIND_KEY)),
            (
                "АдресЭлектроннойПочты",
                "info@romashka.example",
                Some(EMAIL_KIND_KEY)
            ),
        ]
    );
    assert_eq!(created.contacts[0].phone_digits, "74951110001");
    // Searched by INN and KPP first, as the issue spells it.
    let search = mock
        .requests()
        .into_iter()
        .find(|r| {
            r.method == "GET"
                && r.entity_set.as_deref() == Some(COUNTERPARTIES)
                && r.option("$top") == Some("2")
        })
        .expect("a search before the create");
    assert_eq!(
        search.option("$filter"),
        Some("ИНН eq '7707083893' and КПП eq '773601001' and DeletionMark eq false and IsFolder eq false")
    );
    assert_eq!(creates(&mock), 1);

    // 1C's next read brings the record back (its own, source onec): the
    // writer is sent nothing again.
    let pages = mock.count(support::mock_onec::RequestKind::CatalogPage);
    gw.gateway().reload();
    until(Duration::from_secs(20), "1C read again", || async {
        mock.count(support::mock_onec::RequestKind::CatalogPage) > pages
    })
    .await;
    until(
        Duration::from_secs(20),
        "1C's copy in the directory",
        || async { gw.gateway().directory().snapshot().len() == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rows(&store, OutboxState::Pending).await.is_empty());
    assert!(dead(&store).await.is_empty());
    assert_eq!(mock.writes().len(), 1, "{:?}", mock.writes());

    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_onec_writes_total{op=\"create\",outcome=\"created\"} 1"),
        "{metrics}"
    );
    let status = writer_status(&gw).await;
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(status["transport"], "odata", "{status}");
}

#[tokio::test]
async fn a_counterparty_1c_has_by_inn_is_adopted_not_created() {
    let mock = MockOnec::start_for_writes().await;
    let theirs = guid(7);
    mock.upsert(MockCounterparty::new(theirs.clone(), "ООО Ромашка (1С)").inn(INN, KPP));
    // Another branch (KPP) and a deleted copy do not count.
    mock.upsert(MockCounterparty::new(guid(8), "Филиал").inn(INN, "773602002"));
    mock.upsert(
        MockCounterparty::new(guid(9), "Удалён")
            .inn(INN, KPP)
            .deleted(),
    );
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "k1 linked", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    assert_eq!(linked(&store, "k1").await, Some(theirs.clone()));
    assert_eq!(creates(&mock), 0, "{:?}", mock.writes());
    assert!(
        mock.writes().is_empty(),
        "adopted without a write: {:?}",
        mock.writes()
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_onec_writes_total{op=\"create\",outcome=\"exists\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_counterparties_with_the_inn_are_reported_and_nothing_is_written() {
    let mock = MockOnec::start_for_writes().await;
    mock.upsert(MockCounterparty::new(guid(1), "Ромашка 1").inn(INN, KPP));
    mock.upsert(MockCounterparty::new(guid(2), "Ромашка 2").inn(INN, KPP));
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "the row dead", || async {
        !dead(&store).await.is_empty()
    })
    .await;
    let row = &dead(&store).await[0];
    let error = row.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(&guid(1)) && error.contains(&guid(2)),
        "{error}"
    );
    assert!(mock.writes().is_empty());
    let conflicts = store
        .conflicts_page(ConflictQuery {
            system: Some(SYSTEM.into()),
            since: None,
            limit: 10,
        })
        .await
        .expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, "inn");
    assert_eq!(conflicts[0].ours.as_deref(), Some(INN));
    assert!(conflicts[0]
        .theirs
        .as_deref()
        .unwrap_or_default()
        .contains(&guid(2)));
}

#[tokio::test]
async fn a_record_without_an_inn_is_dead_saying_so() {
    let mock = MockOnec::start_for_writes().await;
    let file = format!(
        "{}\n",
        json!({"id": "k2", "name": "Без ИНН", "phones": ["84951110002"]})
    );
    let gw = start_with(&file, &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "the row dead", || async {
        !dead(&store).await.is_empty()
    })
    .await;
    let error = dead(&store).await[0].last_error.clone().unwrap_or_default();
    assert!(error.starts_with("no INN"), "{error}");
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.option("$top") != Some("2")),
        "no search without an INN"
    );
    assert!(mock.writes().is_empty());
}

#[tokio::test]
async fn an_update_sends_what_changed_and_keeps_1c_s_rows() {
    let mock = MockOnec::start_for_writes().await;
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "k1 linked", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    // Someone in 1C adds a phone of their own.
    let (mut theirs, _, _) = mock.counterparties().remove(0);
    theirs = theirs.phone("+7 999 000-00-00", "79990000000");
    mock.upsert(theirs.clone());
    mock.reset_requests();
    // The record changes here: a new name and a second e-mail.
    let file = format!(
        "{}\n",
        json!({"id": "k1", "name": "Ромашка Плюс", "inn": INN, "kpp": KPP,
               "phones": ["+7 (495) 111-00-01"],
               "emails": ["info@romashka.example", "sales@romashka.example"]})
    );
    std::fs::write(gw.directory_file(), file).expect("rewrite the file");
    until(Duration::from_secs(30), "the update in 1C", || async {
        mock.counterparties()[0].0.description == "Ромашка Плюс"
    })
    .await;
    let (now, _, _) = mock.counterparties().remove(0);
    let shown: Vec<&str> = now
        .contacts
        .iter()
        .map(|c| c.presentation.as_str())
        .collect();
    assert_eq!(
        shown,
        [
            "+7 (495) 111-00-01",
            "info@romashka.example",
            "+7 999 000-00-00",
            "sales@romashka.example"
        ],
        "1C's own row is kept, ours added once"
    );
    let writes = mock.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PATCH");
    assert_eq!(writes[0].key.as_deref(), Some(now.ref_key.as_str()));
    assert_eq!(creates(&mock), 0);
}

#[tokio::test]
async fn a_counterparty_deleted_in_1c_closes_the_link_and_is_not_created_again() {
    let mock = MockOnec::start_for_writes().await;
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "k1 linked", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    let ours = linked(&store, "k1").await.expect("linked");
    mock.remove(&ours);
    mock.reset_requests();
    std::fs::write(gw.directory_file(), romashka("Ромашка 2")).expect("rewrite the file");
    until(Duration::from_secs(30), "the row dead", || async {
        !dead(&store).await.is_empty()
    })
    .await;
    let error = dead(&store).await[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("404") && error.contains(&ours), "{error}");
    let link = store
        .idmap_get(SYSTEM, KIND, "k1")
        .await
        .expect("id-map")
        .expect("row");
    assert!(link.closed_at.is_some(), "the link is closed");
    let conflicts = store
        .conflicts_page(ConflictQuery {
            system: Some(SYSTEM.into()),
            since: None,
            limit: 10,
        })
        .await
        .expect("conflicts");
    assert!(
        conflicts
            .iter()
            .any(|c| c.field == "deleted" && c.resolution == "link_closed"),
        "{conflicts:?}"
    );
    // A later change is not sent: no create of what 1C deleted.
    std::fs::write(gw.directory_file(), romashka("Ромашка 3")).expect("rewrite the file");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(creates(&mock), 0, "{:?}", mock.writes());
    assert!(mock.counterparties().is_empty());
}

/// Starts with an empty file, puts `k1`'s bank details in the sync store's
/// requisites, then writes the record.
async fn with_bank(mock: &MockOnec, bik: &str) -> TestGateway {
    let gw = start_with("", &writer_tables(mock)).await;
    let store = sync_store(&gw);
    let requisites = json!({"bank": [{"bik": bik, "account": "40702810900000000001"}]});
    store
        .requisites_put(vec![("k1".into(), requisites.to_string())])
        .await
        .expect("requisites");
    std::fs::write(gw.directory_file(), romashka("Ромашка")).expect("write the file");
    until(Duration::from_secs(30), "k1 linked", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    gw
}

#[tokio::test]
async fn the_bank_account_is_added_by_bik_and_made_the_main_one() {
    let mock = MockOnec::start_for_writes().await;
    let bank = guid(500);
    mock.add_bank(&bank, "044525225", "ПАО Сбербанк", "30101810400000000225");
    let gw = with_bank(&mock, "044525225").await;
    let store = sync_store(&gw);
    let owner = linked(&store, "k1").await.expect("linked");
    until(Duration::from_secs(10), "the account in 1C", || async {
        mock.counterparties()[0]
            .0
            .extra
            .get("ОсновнойБанковскийСчет_Key")
            .is_some_and(|k| k != support::mock_onec::EMPTY_REF)
    })
    .await;
    let accounts = mock.bank_accounts();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = &accounts[0];
    assert_eq!(account["Owner"], json!(owner));
    assert_eq!(account["Owner_Type"], "StandardODATA.Catalog_Контрагенты");
    assert_eq!(account["НомерСчета"], "40702810900000000001");
    assert_eq!(account["Банк_Key"], json!(bank));
    assert_eq!(
        mock.counterparties()[0].0.extra["ОсновнойБанковскийСчет_Key"],
        account["Ref_Key"]
    );
    assert!(mock
        .writes()
        .iter()
        .any(|w| w.entity_set.as_deref() == Some(BANK_ACCOUNTS)));
}

/// `k1`'s counterparty's main account in the mock, once set.
fn main_account(mock: &MockOnec) -> Option<String> {
    mock.counterparties()
        .first()
        .and_then(|c| c.0.extra.get("ОсновнойБанковскийСчет_Key").cloned())
        .and_then(|k| k.as_str().map(str::to_owned))
        .filter(|k| k != support::mock_onec::EMPTY_REF)
}

#[tokio::test]
async fn a_create_adopted_after_a_lost_answer_still_gets_its_bank_account_once() {
    let mock = MockOnec::start_for_writes().await;
    let bank = guid(500);
    mock.add_bank(&bank, "044525225", "ПАО Сбербанк", "30101810400000000225");
    // 1C commits the counterparty's POST and never answers: the retry's
    // search finds it (`exists`), and the bank step runs after all.
    mock.fault_next_writes(&[WriteFault::CommitThenHang]);
    let gw = with_bank(&mock, "044525225").await;
    let store = sync_store(&gw);
    until(
        Duration::from_secs(10),
        "the main account in 1C",
        || async { main_account(&mock).is_some() },
    )
    .await;
    assert_eq!(creates(&mock), 1, "{:?}", mock.writes());
    let accounts = mock.bank_accounts();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(
        accounts[0]["Owner"],
        json!(linked(&store, "k1").await.expect("linked"))
    );
    assert_eq!(accounts[0]["НомерСчета"], "40702810900000000001");
    assert_eq!(
        main_account(&mock),
        accounts[0]["Ref_Key"].as_str().map(str::to_owned)
    );
    // The search for the account named its owner as 1C's composite
    // references want it.
    assert!(mock.requests().iter().any(|r| r
        .option("$filter")
        .is_some_and(|f| f.contains("Owner eq cast(guid'"))));
}

#[tokio::test]
async fn an_adopted_counterparty_with_the_account_gets_no_second_one() {
    let mock = MockOnec::start_for_writes().await;
    let bank = guid(500);
    mock.add_bank(&bank, "044525225", "ПАО Сбербанк", "30101810400000000225");
    // What a crash after the account's POST leaves: the counterparty and
    // its account, no main account yet.
    let owner = guid(1);
    mock.upsert(MockCounterparty::new(&owner, "Ромашка").inn(INN, KPP));
    mock.add_bank_account(&guid(2), &owner, "40702810900000000001", &bank);
    let _gw = with_bank(&mock, "044525225").await;
    until(
        Duration::from_secs(10),
        "the main account in 1C",
        || async { main_account(&mock).is_some() },
    )
    .await;
    assert_eq!(creates(&mock), 0, "{:?}", mock.writes());
    assert_eq!(mock.bank_accounts().len(), 1, "{:?}", mock.bank_accounts());
    assert_eq!(main_account(&mock), Some(guid(2)));
}

#[tokio::test]
async fn a_bik_1c_lacks_writes_no_account_and_says_why() {
    let mock = MockOnec::start_for_writes().await;
    let gw = with_bank(&mock, "044525999").await;
    let store = sync_store(&gw);
    until(
        Duration::from_secs(10),
        "a conflict about the bank",
        || async {
            store
                .conflicts_page(ConflictQuery {
                    system: Some(SYSTEM.into()),
                    since: None,
                    limit: 10,
                })
                .await
                .is_ok_and(|c| c.iter().any(|c| c.field == "bank"))
        },
    )
    .await;
    assert!(mock.bank_accounts().is_empty());
    assert_eq!(
        creates(&mock),
        1,
        "the counterparty is created all the same"
    );
    let conflicts = store
        .conflicts_page(ConflictQuery {
            system: Some(SYSTEM.into()),
            since: None,
            limit: 10,
        })
        .await
        .expect("conflicts");
    let bank = conflicts
        .iter()
        .find(|c| c.field == "bank")
        .expect("bank conflict");
    assert!(bank.resolution.contains("044525999"), "{bank:?}");
}

#[tokio::test]
async fn an_unknown_property_is_dead_with_1c_s_message() {
    let mock = MockOnec::start_for_writes().await;
    let extra = "[sync.onec.fields]\nfull_name = \"НетТакогоРеквизита\"\n";
    let gw = start_with(
        &romashka("Ромашка"),
        &tables(&mock, WRITE_USERNAME, WRITE_PASSWORD, extra),
    )
    .await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "the row dead", || async {
        !dead(&store).await.is_empty()
    })
    .await;
    let error = dead(&store).await[0].last_error.clone().unwrap_or_default();
    assert!(
        error.contains("400") && error.contains("НетТакогоРеквизита"),
        "{error}"
    );
    assert!(mock.counterparties().is_empty());
}

#[tokio::test]
async fn wrong_write_credentials_block_the_writer_naming_them() {
    let mock = MockOnec::start_for_writes().await;
    let gw = start_with(
        &romashka("Ромашка"),
        &tables(&mock, WRITE_USERNAME, "not-the-password", ""),
    )
    .await;
    until(Duration::from_secs(30), "the writer blocked", || async {
        writer_status(&gw).await["state"] == "blocked"
    })
    .await;
    let status = writer_status(&gw).await;
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains("sync.onec.write_password"),
        "{reason}"
    );
    assert!(!reason.contains("not-the-password"), "{reason}");
    assert!(mock.counterparties().is_empty());
    assert!(dead(&sync_store(&gw)).await.is_empty(), "blocked, not dead");
}

#[tokio::test]
async fn the_read_user_s_writes_are_refused_and_block_naming_the_rights() {
    let mock = MockOnec::start_for_writes().await;
    // The read user as the write user: 1C lets it read (the search) and
    // refuses its writes.
    let gw = start_with(&romashka("Ромашка"), &tables(&mock, USERNAME, PASSWORD, "")).await;
    until(Duration::from_secs(30), "the writer blocked", || async {
        writer_status(&gw).await["state"] == "blocked"
    })
    .await;
    let status = writer_status(&gw).await;
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("403") && reason.contains("write_username"),
        "{reason}"
    );
    assert!(mock.counterparties().is_empty());
}

#[tokio::test]
async fn a_failing_1c_is_retried_and_the_record_created_once() {
    let mock = MockOnec::start_for_writes().await;
    mock.set_mode(Mode::Fail);
    let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "a failed attempt", || async {
        rows(&store, OutboxState::Pending)
            .await
            .first()
            .is_some_and(|r| r.last_error.is_some())
    })
    .await;
    mock.set_mode(Mode::Normal);
    until(Duration::from_secs(30), "k1 linked", || async {
        linked(&store, "k1").await.is_some()
    })
    .await;
    assert_eq!(mock.counterparties().len(), 1);
}

#[tokio::test]
async fn a_create_committed_but_never_answered_is_adopted_not_repeated() {
    for fault in [WriteFault::CommitThenHang, WriteFault::CommitThenCut] {
        let mock = MockOnec::start_for_writes().await;
        mock.fault_next_writes(&[fault]);
        let gw = start_with(&romashka("Ромашка"), &writer_tables(&mock)).await;
        let store = sync_store(&gw);
        until(Duration::from_secs(30), "k1 linked", || async {
            linked(&store, "k1").await.is_some()
        })
        .await;
        let all = mock.counterparties();
        assert_eq!(all.len(), 1, "{fault:?}: {all:?}");
        assert_eq!(linked(&store, "k1").await, Some(all[0].0.ref_key.clone()));
        assert_eq!(creates(&mock), 1, "{fault:?}");
    }
}

#[tokio::test]
async fn a_gateway_killed_after_1c_s_commit_creates_nothing_twice() {
    let mock = MockOnec::start_for_writes().await;
    // The first create is committed and never answered: the kill lands
    // between 1C's commit and the gateway's.
    mock.fault_next_writes(&[WriteFault::CommitThenHang]);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), romashka("Ромашка"))
        .expect("write directory");
    let port = support::process::free_port();
    let config = dir.path().join("gateway.toml");
    // A long timeout: the kill comes first.
    let table = writer_tables(&mock).replace("timeout = \"1s\"", "timeout = \"1h\"");
    std::fs::write(
        &config,
        config_text_on(dir.path(), &format!("127.0.0.1:{port}"), &table),
    )
    .expect("write config");
    let sync_file = cti_gateway::gateway::sync_store_path(&dir.path().join("store.sqlite"));
    let spawn = |log: &str| {
        support::process::serve_command(&config, &dir.path().join(log))
            .spawn()
            .expect("the gateway starts")
    };
    let mut child = spawn("first.log");
    until(
        Duration::from_secs(60),
        "1C committed the create",
        || async { mock.counterparties().len() == 1 },
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let mut child = spawn("second.log");
    until(
        Duration::from_secs(60),
        "k1 linked after the restart",
        || async { linked_in_file(&sync_file).is_some() },
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let all = mock.counterparties();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(linked_in_file(&sync_file), Some(all[0].0.ref_key.clone()));
    assert_eq!(creates(&mock), 1, "{:?}", mock.writes());
}

/// `k1`'s remote id in the sync file, read beside the running child (WAL).
fn linked_in_file(sync_file: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open_with_flags(
        sync_file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row(
        "SELECT remote_id FROM idmap WHERE system = ?1 AND local_id = 'k1' AND closed_at IS NULL",
        [SYSTEM],
        |r| r.get::<_, Option<String>>(0),
    )
    .ok()
    .flatten()
}

/// The write client against the mock, as the writer speaks to 1C.
fn write_client(mock: &MockOnec) -> cti_gateway::sources::onec::odata::OdataClient {
    let config: cti_gateway::config::OnecConfig =
        toml::from_str(&format!("odata_url = \"{}\"", mock.url())).expect("[onec]");
    cti_gateway::sources::onec::odata::OdataClient::writer(
        &config,
        WRITE_USERNAME,
        Some(cti_gateway::config::Secret::new(WRITE_PASSWORD)),
        Duration::from_secs(5),
    )
    .expect("client")
}

#[tokio::test]
async fn the_mock_refuses_what_1c_refuses() {
    use cti_gateway::sources::onec::odata::OdataError;
    let mock = MockOnec::start_for_writes().await;
    let client = write_client(&mock);
    let status = |e: OdataError| match e {
        OdataError::Status {
            status,
            code,
            message,
            ..
        } => (status, code, message),
        other => panic!("{other:?}"),
    };
    // Rows of a tabular section are not POSTed to its own set: code 13.
    let e = client
        .post(
            support::mock_onec::CONTACTS,
            br#"{"LineNumber":"1"}"#,
            "rows",
        )
        .await
        .expect_err("refused");
    let (code, text) = (status(e.clone()).1, e.to_string());
    assert_eq!(code.as_deref(), Some("13"), "{text}");
    assert!(text.contains("табличной части напрямую"), "{text}");
    // A row without LineNumber, an unknown property: 400.
    let e = client
        .post(
            COUNTERPARTIES,
            r#"{"Description":"A","КонтактнаяИнформация":[{"Тип":"Телефон"}]}"#.as_bytes(),
            "a create",
        )
        .await
        .expect_err("refused");
    assert_eq!(status(e).0, 400);
    let e = client
        .post(COUNTERPARTIES, r#"{"Нет":"1"}"#.as_bytes(), "a create")
        .await
        .expect_err("refused");
    let (code, _, message) = status(e);
    assert_eq!(code, 400);
    assert!(message.contains("Нет"), "{message}");
    assert!(mock.counterparties().is_empty());
    // A create answers the entity; a PATCH with the section replaces it and
    // bumps DataVersion.
    let created: serde_json::Value = serde_json::from_slice(
        &client
            .post(
                COUNTERPARTIES,
                r#"{"Description":"A","КонтактнаяИнформация":[{"LineNumber":"1","Тип":"Телефон","Представление":"1"},{"LineNumber":"2","Тип":"Телефон","Представление":"2"}]}"#.as_bytes(),
                "a create",
            )
            .await
            .expect("created"),
    )
    .expect("JSON");
    let key = created["Ref_Key"].as_str().expect("Ref_Key").to_owned();
    assert!(created["Code"].as_str().is_some_and(|c| !c.is_empty()));
    let patched: serde_json::Value = serde_json::from_slice(
        &client
            .patch(
                &format!("{COUNTERPARTIES}(guid'{key}')"),
                r#"{"КонтактнаяИнформация":[{"LineNumber":"1","Тип":"Телефон","Представление":"3"}]}"#.as_bytes(),
                "an update",
            )
            .await
            .expect("patched"),
    )
    .expect("JSON");
    assert_ne!(patched["DataVersion"], created["DataVersion"]);
    assert_eq!(patched["Description"], "A");
    let rows = patched["КонтактнаяИнформация"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Представление"], "3");
    // The read user reads but may not write; wrong credentials are 401.
    let config: cti_gateway::config::OnecConfig = toml::from_str(&format!(
        "odata_url = \"{}\"\nusername = \"{USERNAME}\"\npassword = \"{PASSWORD}\"",
        mock.url()
    ))
    .expect("[onec]");
    let reader = cti_gateway::sources::onec::odata::OdataClient::new(&config).expect("client");
    let e = reader
        .post(COUNTERPARTIES, br#"{"Description":"B"}"#, "a create")
        .await
        .expect_err("refused");
    assert_eq!(status(e).0, 403);
    let wrong = cti_gateway::sources::onec::odata::OdataClient::writer(
        &config,
        WRITE_USERNAME,
        Some(cti_gateway::config::Secret::new("wrong")),
        Duration::from_secs(5),
    )
    .expect("client");
    let e = wrong
        .post(COUNTERPARTIES, br#"{"Description":"B"}"#, "a create")
        .await
        .expect_err("refused");
    assert!(matches!(e, OdataError::Unauthorized { .. }), "{e:?}");
    assert_eq!(mock.counterparties().len(), 1);
}

/// Two records of the CRM system `testcrm` (their keys say so): one 1C
/// lacks, one it has by INN.
fn crm_records() -> String {
    format!(
        "{}\n{}\n",
        json!({"id": "testcrm:company:1", "name": "Ромашка", "inn": INN, "kpp": KPP}),
        json!({"id": "testcrm:company:2", "name": "Лютик", "inn": "7736000002", "kpp": "773601001"})
    )
}

/// A gateway over `dir` with the writer and the CRM system `testcrm`
/// (nothing answers its API; only its hook for write outcomes matters),
/// whose hook logs to `log` (and hangs, with `hang`).
async fn start_with_origin(
    dir: tempfile::TempDir,
    mock: &MockOnec,
    log: support::test_system::LinkedLog,
    hang: bool,
) -> TestGateway {
    use std::sync::Arc;

    use cti_gateway::config::Config;
    use cti_gateway::gateway::Gateway;
    use cti_gateway::sync::system::System;
    use cti_gateway::sync::SystemSpec;
    use support::test_system::TestSystem;

    let path = dir.path().join("gateway.toml");
    let extra = format!(
        "{}\n[sync.testcrm]\nretry_first = \"1h\"\nretry_max = \"1h\"\n",
        writer_tables(mock)
    );
    let config = Config::parse(&config_text(dir.path(), &extra), &path, &|_| None)
        .expect("test config is valid");
    let mut systems = cti_gateway::sync::build_systems(&config);
    let spec = SystemSpec::new("testcrm")
        .expect("name")
        .with_fields(&["name"])
        .expect("fields");
    // Port 9 (discard) on loopback: nothing answers.
    let crm = TestSystem::new(spec, "http://127.0.0.1:9").with_linked_log(log, hang);
    systems.push(Arc::new(crm) as Arc<dyn System>);
    let gateway = Gateway::start_with(config, systems)
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

/// Outcomes in the sync file not yet handed on.
fn outcomes_to_notify(sync_file: &Path) -> i64 {
    let conn = rusqlite::Connection::open(sync_file).expect("the sync file");
    conn.query_row("SELECT count(*) FROM outcomes WHERE notify = 1", [], |r| {
        r.get(0)
    })
    .expect("outcomes")
}

#[tokio::test]
async fn outcomes_reach_the_record_s_origin_once_and_survive_a_stop_mid_hook() {
    let mock = MockOnec::start_for_writes().await;
    let existing = guid(7);
    mock.upsert(MockCounterparty::new(&existing, "Лютик").inn("7736000002", "773601001"));
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), crm_records())
        .expect("write directory");

    // First run: the CRM's hook is called with the first outcome and never
    // returns; the gateway stops in the middle of it.
    let first = support::test_system::LinkedLog::default();
    let mut gw = start_with_origin(dir, &mock, first.clone(), true).await;
    let store = sync_store(&gw);
    until(Duration::from_secs(30), "both records linked", || async {
        linked(&store, "testcrm:company:1").await.is_some()
            && linked(&store, "testcrm:company:2").await.is_some()
    })
    .await;
    until(Duration::from_secs(10), "the hook called", || async {
        !first.lock().expect("log").is_empty()
    })
    .await;
    // What the outbox listing shows of confirmed rows, waited for: a record
    // can be linked before its row is settled. (Under load this listing was
    // once empty for good: the CRM's rows, queued after 1C's were confirmed
    // and deleted, were given their ids again and hid their outcomes. Ids
    // are never reused since sync migration 8.)
    let listing = || async {
        let reply = request(
            gw.addr,
            "GET",
            "/api/v1/sync/outbox?system=onec&state=done",
            &["Authorization: Bearer api-token-for-tests"],
            b"",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let done: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
        done["rows"].as_array().expect("rows").clone()
    };
    until(
        Duration::from_secs(10),
        "both rows listed as done",
        || async { listing().await.len() == 2 },
    )
    .await;
    let done = listing().await;
    assert_eq!(done.len(), 2, "{done:?}");
    let by_key = |key: &str| {
        done.iter()
            .find(|r| r["record_key"] == key)
            .unwrap_or_else(|| panic!("{key} in {done:?}"))["outcome"]
            .clone()
    };
    let created = by_key("testcrm:company:1");
    assert_eq!(created["outcome"], "created");
    let all = mock.counterparties();
    let ours = all
        .iter()
        .find(|c| c.0.ref_key != existing)
        .expect("the created one");
    assert_eq!(created["remote_ref"], json!(ours.0.ref_key));
    assert!(
        created["remote_code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{created}"
    );
    assert_eq!(by_key("testcrm:company:2")["outcome"], "exists");
    assert_eq!(by_key("testcrm:company:2")["remote_ref"], json!(existing));
    assert_eq!(first.lock().expect("log").len(), 1);
    gw.stop().await;
    let dir = gw.dir;
    let sync_file = cti_gateway::gateway::sync_store_path(&dir.path().join("store.sqlite"));
    assert_eq!(outcomes_to_notify(&sync_file), 2, "none marked handed on");

    // Second run: both handed on, in outbox order, the interrupted one again.
    let second = support::test_system::LinkedLog::default();
    let mut gw = start_with_origin(dir, &mock, second.clone(), false).await;
    until(
        Duration::from_secs(10),
        "both outcomes handed on",
        || async { second.lock().expect("log").len() >= 2 },
    )
    .await;
    gw.stop().await;
    let seen = second.lock().expect("log").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].outbox_id < seen[1].outbox_id, "{seen:?}");
    let one = seen
        .iter()
        .find(|o| o.record_key == "testcrm:company:1")
        .expect("company 1");
    assert_eq!(one.outcome.as_str(), "created");
    assert_eq!(one.system, SYSTEM);
    assert_eq!(one.remote_ref.as_deref(), Some(ours.0.ref_key.as_str()));
    assert_eq!(one.remote_code.as_deref(), Some(ours.1.as_str()));
    let two = seen
        .iter()
        .find(|o| o.record_key == "testcrm:company:2")
        .expect("company 2");
    assert_eq!(two.outcome.as_str(), "exists");
    assert_eq!(two.remote_ref.as_deref(), Some(existing.as_str()));
    assert!(two.remote_code.is_some(), "{two:?}");
    // Handed on once: nothing waits for a third start.
    let sync_file = cti_gateway::gateway::sync_store_path(&gw.dir.path().join("store.sqlite"));
    assert_eq!(outcomes_to_notify(&sync_file), 0);
    assert_eq!(creates(&mock), 1, "{:?}", mock.writes());
}
