//! The operator page in a real browser: headless Chromium (Debian's
//! `chromium` package), driven over the Chrome DevTools Protocol, opens
//! `/operator#token=T` on a gateway at 127.0.0.1:0; IncomingCall goes over
//! SOAP as the PBX sends it, and the test reads the page's DOM (and what the
//! browser lays out) until the caller's card is there. Beyond the first
//! card: a gateway restarted between calls (same store, same address), a
//! store replaced (the numbers start again), a reload while a call rings
//! (shown again, marked earlier), a token changed in the fragment (the old
//! socket closed, the page emptied), a page left (its socket closed), a
//! typed token against a stale fragment, 200 calls (50 cards kept), a
//! 300-letter name (wrapped), the sound and notification switch and the
//! unread count (with the browser's notifications, sound and visibility
//! stood in for), the retry countdown, a token with `+` in a
//! bookmark, and a CRM's manager and links (a link opens in a new tab;
//! a `javascript:` one is never a link). Each page is checked to have run under
//! its Content-Security-Policy with no violation (no inline script or style
//! is allowed) and with its stylesheet applied; one runs with
//! `popup.allowed_origins` set to another site, which the page's own origin
//! need not be listed in.
//!
//! Ignored by default: it needs `/usr/bin/chromium`, which `.ci/run`
//! installs. Run with `cargo test --test operator_page_browser --
//! --include-ignored`. Set `OPERATOR_PAGE_SCREENSHOT=/some/file.png` to keep
//! a copy of the screenshot taken once the card is shown.

mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cti_gateway::config::Config;
use cti_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The seed's caller: counterparty `a1` ("Фэйковый чиж") of [`DIRECTORY`].
const CALLER: &str = "89235292926";
/// A number [`DIRECTORY`] does not know.
const UNKNOWN_CALLER: &str = "89990000000";
/// An operator whose token is base64 with `+` and `/` in it, as
/// `openssl rand -base64` makes them (see [`plus_operator`]).
const PLUS_KEY: &str = "plusKey00000001";
const PLUS_TOKEN: &str = "Ab+cD/eF+gH0iJ==";

/// Longest the browser may take to start and print its DevTools address.
const LAUNCH_LIMIT: Duration = Duration::from_secs(30);
/// Longest one DevTools command may take to answer.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Longest the page may take to reach an expected state.
const PAGE_LIMIT: Duration = Duration::from_secs(10);

/// What the page shows, read in the page by [`STATE_JS`].
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageState {
    url: String,
    status: String,
    status_class: String,
    /// `#login` is laid out (not `display: none`).
    login_shown: bool,
    login_error: String,
    login_error_shown: bool,
    cards: Vec<Card>,
    /// What the page's policy blocked (`securitypolicyviolation` events,
    /// recorded by [`RECORD_CSP_VIOLATIONS`]).
    csp_violations: Vec<String>,
    /// The header's computed background: the stylesheet's colour once it
    /// has loaded.
    header_background: String,
    /// `#operator`: who the token belongs to.
    operator: String,
    /// `document.title`.
    title: String,
    /// The sound and notification switch is on.
    alerts_on: bool,
    /// The page is wider than its window (something overflows).
    overflows: bool,
    /// The document's height in px.
    height: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Card {
    class: String,
    title: String,
    /// The `dl`'s (dt, dd) pairs, in order.
    fields: Vec<(String, String)>,
    /// The card has a box on screen.
    shown: bool,
    /// The card's content is wider than its box.
    overflows: bool,
}

impl Card {
    fn field(&self, label: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.as_str())
    }
}

const STATE_JS: &str = r#"(() => {
  const $ = (id) => document.getElementById(id);
  const shown = (el) => !!el && getComputedStyle(el).display !== "none" && el.getClientRects().length > 0;
  const status = $("status"), login = $("login"), error = $("login-error");
  return {
    url: location.href,
    status: status ? status.textContent : "",
    statusClass: status ? status.className : "",
    loginShown: shown(login),
    loginError: error ? error.textContent : "",
    loginErrorShown: shown(error),
    cspViolations: window.__cspViolations || [],
    headerBackground: document.querySelector("header") ? getComputedStyle(document.querySelector("header")).backgroundColor : "",
    operator: $("operator") ? $("operator").textContent : "",
    title: document.title,
    alertsOn: !!($("alerts") && $("alerts").checked),
    overflows: document.documentElement.scrollWidth > document.documentElement.clientWidth,
    height: document.documentElement.scrollHeight,
    cards: [...document.querySelectorAll("article.card")].map((card) => ({
      class: card.className,
      title: card.querySelector("h2")?.textContent ?? "",
      fields: [...card.querySelectorAll("dl > dt")].map((dt) =>
        [dt.textContent, dt.nextElementSibling ? dt.nextElementSibling.textContent : ""]),
      shown: shown(card),
      overflows: card.scrollWidth > card.clientWidth ||
        [...card.querySelectorAll("h2, dd")].some((el) => el.scrollWidth > el.clientWidth),
    })),
  };
})()"#;

/// Added to every document before its own scripts: records what the page's
/// Content-Security-Policy blocks, which the page itself would only log.
const RECORD_CSP_VIOLATIONS: &str = r#"window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + (e.sample || ""));
});"#;

/// The header's background in `assets/operator.css` (#1d2330).
const HEADER_BACKGROUND: &str = "rgb(29, 35, 48)";

/// A headless Chromium with one page, driven over its DevTools WebSocket.
/// Killed when dropped (a failing test included).
struct Browser {
    child: Child,
    devtools: WebSocketStream<TcpStream>,
    next_id: u64,
    /// The page's flattened DevTools session.
    session: Option<String>,
    /// Exceptions the page's scripts threw (`Runtime.exceptionThrown`).
    exceptions: Vec<String>,
    /// The browser's last stderr lines, for failure messages.
    log: Arc<Mutex<VecDeque<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: install Debian's chromium package (.ci/run does)"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));

        // Reads stderr to its end (so the browser never blocks on a full
        // pipe), hands over the DevTools address and keeps the last lines.
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("stderr piped");
        let task_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
                let mut log = task_log.lock().unwrap();
                if log.len() == 40 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });

        let url = match timeout(LAUNCH_LIMIT, rx).await {
            Ok(Ok(url)) => url,
            Ok(Err(_)) => panic!(
                "chromium ended without a DevTools address ({:?}); its stderr:\n{}",
                child.try_wait(),
                tail(&log)
            ),
            Err(_) => panic!(
                "no DevTools address from chromium within {LAUNCH_LIMIT:?}; its stderr:\n{}",
                tail(&log)
            ),
        };
        // ws://127.0.0.1:PORT/devtools/browser/ID: only ever 127.0.0.1.
        let host_port = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools address {url}"));
        assert!(
            host_port.starts_with("127.0.0.1:"),
            "DevTools not on 127.0.0.1: {url}"
        );
        let stream = timeout(CALL_LIMIT, TcpStream::connect(host_port))
            .await
            .expect("DevTools connect within the limit")
            .expect("DevTools connect");
        let (devtools, _) = timeout(CALL_LIMIT, tokio_tungstenite::client_async(&url, stream))
            .await
            .expect("DevTools handshake within the limit")
            .expect("DevTools handshake");
        Browser {
            child,
            devtools,
            next_id: 0,
            session: None,
            exceptions: Vec::new(),
            log,
            _profile: profile,
        }
    }

    /// Sends one DevTools command (to the page's session once there is one)
    /// and waits for its answer; events that come meanwhile are read and
    /// exceptions noted.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let answer = timeout(CALL_LIMIT, async {
            self.devtools
                .send(WsMessage::text(command.to_string()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            loop {
                let text = match self.devtools.next().await {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None => {
                        return Err("DevTools connection closed".to_owned())
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("DevTools connection: {e}")),
                };
                let message: Value =
                    serde_json::from_str(&text).map_err(|e| format!("bad DevTools JSON: {e}"))?;
                if message["method"] == "Runtime.exceptionThrown" {
                    let details = &message["params"]["exceptionDetails"];
                    self.exceptions.push(format!(
                        "{} {}",
                        details["text"].as_str().unwrap_or(""),
                        details["exception"]["description"].as_str().unwrap_or("")
                    ));
                }
                if message["id"] == id {
                    return Ok(message);
                }
            }
        })
        .await
        .map_err(|_| format!("{method}: no answer within {CALL_LIMIT:?}"))??;
        match answer.get("error") {
            Some(error) => Err(format!("{method}: {error}")),
            None => Ok(answer["result"].clone()),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(e) => panic!("{e}; chromium's stderr:\n{}", tail(&self.log)),
        }
    }

    /// Opens a page (1024×700), attaches to it and navigates it to `url`.
    async fn open(&mut self, url: &str) {
        self.open_with(url, "").await;
    }

    /// [`Browser::open`], with `script` run in every document before the
    /// page's own (to stand in for browser features a test must observe).
    async fn open_with(&mut self, url: &str, script: &str) {
        let target = self
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        self.session = Some(session);
        self.call("Runtime.enable", json!({})).await;
        self.call("Page.enable", json!({})).await;
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": RECORD_CSP_VIOLATIONS }),
        )
        .await;
        if !script.is_empty() {
            self.call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": script }),
            )
            .await;
        }
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1024, "height": 700, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        let navigated = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            navigated.get("errorText").is_none(),
            "navigating to {url}: {navigated}"
        );
    }

    /// Runs `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// What the page shows now; `None` while there is no document to ask
    /// (the page is between documents).
    async fn state(&mut self) -> Option<PageState> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({ "expression": STATE_JS, "returnByValue": true }),
            )
            .await
            .ok()?;
        if result.get("exceptionDetails").is_some() {
            return None;
        }
        serde_json::from_value(result["result"]["value"].clone()).ok()
    }

    /// Reads the page until `done` holds, for at most [`PAGE_LIMIT`].
    async fn wait_for(&mut self, what: &str, done: impl Fn(&PageState) -> bool) -> PageState {
        let deadline = Instant::now() + PAGE_LIMIT;
        let mut last = None;
        loop {
            if let Some(state) = self.state().await {
                if done(&state) {
                    return state;
                }
                last = Some(state);
            }
            if Instant::now() >= deadline {
                panic!(
                    "the page did not show {what} within {PAGE_LIMIT:?}; it shows {last:#?}; \
                     page exceptions: {:?}",
                    self.exceptions
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page as laid out now.
    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let data = shot["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64")
    }

    /// Asks the browser to close and waits (bounded) for it to exit; kills
    /// it otherwise. Asserts the page threw no exceptions, its policy
    /// blocked nothing and its stylesheet applied.
    async fn close(mut self) {
        let state = self
            .wait_for("its stylesheet applied", |s| {
                s.header_background == HEADER_BACKGROUND
            })
            .await;
        assert!(
            state.csp_violations.is_empty(),
            "the page's Content-Security-Policy blocked: {:?}",
            state.csp_violations
        );
        let exceptions = std::mem::take(&mut self.exceptions);
        self.session = None;
        // The browser may go before it answers: either is fine.
        let _ = self.try_call("Browser.close", json!({})).await;
        if timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        assert!(
            exceptions.is_empty(),
            "the page's scripts threw: {exceptions:?}"
        );
    }
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    let log = log.lock().unwrap();
    log.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Opens the operator page with `token` in the fragment.
async fn open_operator_page(gw: &TestGateway, token: &str) -> Browser {
    let mut browser = Browser::launch().await;
    browser
        .open(&format!("http://{}/operator#token={token}", gw.addr))
        .await;
    browser
}

/// Opens the operator page with `token` and waits until it says it is
/// connected.
async fn open_connected_page(gw: &TestGateway, token: &str) -> Browser {
    let mut browser = open_operator_page(gw, token).await;
    browser
        .wait_for("the status pill as connected", |s| {
            s.status_class == "connected"
        })
        .await;
    browser
}

/// Three calls from [`CALLER`] to [`OPERATOR_KEY`], each seen on the page.
async fn see_three_calls(browser: &mut Browser, gw: &TestGateway) {
    for count in 1..=3 {
        call_and_see(browser, gw, OPERATOR_KEY, CALLER, count, "Фэйковый чиж").await;
    }
}

/// IncomingCall over SOAP for [`OPERATOR_KEY`], as the PBX sends it.
async fn incoming_call(gw: &TestGateway, number: &str) {
    incoming_call_to(gw, number, OPERATOR_KEY).await;
}

/// IncomingCall over SOAP for `key`; the gateway answers `1`.
async fn incoming_call_to(gw: &TestGateway, number: &str, key: &str) {
    let reply = soap(gw.addr, &incoming_call_envelope(number, key)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        element_text(&reply.body, "m:return"),
        Some("1"),
        "{}",
        reply.body
    );
}

/// The `[[operator]]` entry of [`PLUS_KEY`], for the gateway's configuration.
fn plus_operator() -> String {
    format!("[[operator]]\nkey = \"{PLUS_KEY}\"\ntoken = \"{PLUS_TOKEN}\"\nname = \"Плюсов\"\n")
}

/// Polls `cond` every 20 ms until it holds, for at most [`PAGE_LIMIT`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PAGE_LIMIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "not within {PAGE_LIMIT:?}: {what}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Stops `gw` (if it still runs) and starts a new gateway over the same folder (store and
/// directory file) on the same address, so that the page, which reconnects
/// to where it was loaded from, finds it.
async fn restart(mut gw: TestGateway) -> TestGateway {
    let addr = gw.addr;
    gw.stop().await;
    let TestGateway { dir, .. } = gw;
    let text = config_text_on(dir.path(), &addr.to_string(), "");
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None)
        .expect("test config is valid");
    let gateway = Gateway::start(config)
        .await
        .expect("the gateway starts again on its address");
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

/// Calls `number` and waits until the page shows `count` cards, the newest
/// (first) one titled with `title`.
async fn call_and_see(
    browser: &mut Browser,
    gw: &TestGateway,
    key: &str,
    number: &str,
    count: usize,
    title: &str,
) {
    incoming_call_to(gw, number, key).await;
    let what = format!("card {count}, {title:?}");
    browser
        .wait_for(&what, |s| {
            s.cards.len() == count && s.cards[0].title.contains(title)
        })
        .await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn incoming_call_shows_the_callers_card_in_the_browser() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    let state = browser.state().await.expect("page state");
    // The token left the address bar; the page says whose screen it is.
    assert!(state.url.ends_with("/operator"), "{state:#?}");
    assert_eq!(state.operator, "Оператор: Иванова", "{state:#?}");
    assert_eq!(state.status, "подключено", "{state:#?}");
    assert!(!state.login_shown, "the login form is shown: {state:#?}");
    assert!(state.cards.is_empty(), "cards before any call: {state:#?}");

    incoming_call(&gw, CALLER).await;
    let state = browser
        .wait_for("the caller's card", |s| {
            s.cards.iter().any(|c| c.title.contains("Фэйковый чиж"))
        })
        .await;
    assert_eq!(state.cards.len(), 1, "{state:#?}");
    let card = &state.cards[0];
    assert!(card.shown, "the card is not laid out: {card:#?}");
    assert!(card.class.contains("latest"), "{card:#?}");
    assert!(!card.class.contains("unknown"), "{card:#?}");
    assert_eq!(card.field("Номер"), Some("+79235292926"), "{card:#?}");
    assert_eq!(card.field("ИНН"), Some("7701234567"), "{card:#?}");
    assert_eq!(card.field("КПП"), Some("770101001"), "{card:#?}");
    assert_eq!(card.field("Категория"), Some("0"), "{card:#?}");
    assert_eq!(card.field("Менеджер (доб.)"), Some("244"), "{card:#?}");
    let phones = card.field("Телефоны").unwrap_or_default();
    assert!(phones.contains("+7 495 000-00-01"), "{card:#?}");
    assert_eq!(state.status_class, "connected", "{state:#?}");

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let file = gw.dir.path().join("operator-page.png");
    std::fs::write(&file, &png).expect("write screenshot");
    if let Some(keep) = std::env::var_os("OPERATOR_PAGE_SCREENSHOT") {
        std::fs::copy(&file, &keep).expect("copy screenshot");
    }

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn unknown_callers_card_shows_the_number_in_the_browser() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;

    incoming_call(&gw, UNKNOWN_CALLER).await;
    let state = browser.wait_for("a card", |s| !s.cards.is_empty()).await;
    assert_eq!(state.cards.len(), 1, "{state:#?}");
    let card = &state.cards[0];
    assert!(card.shown, "the card is not laid out: {card:#?}");
    assert!(card.class.contains("unknown"), "{card:#?}");
    assert!(card.title.contains("+79990000000"), "{card:#?}");
    assert_eq!(card.field("Номер"), Some("+79990000000"), "{card:#?}");
    assert_eq!(card.field("ИНН"), None, "{card:#?}");

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn wrong_token_shows_the_login_form_with_an_error_in_the_browser() {
    let gw = start("").await;
    let mut browser = open_operator_page(&gw, "not-a-token").await;

    let state = browser
        .wait_for("the token as refused", |s| s.status_class == "refused")
        .await;
    assert!(state.status.contains("не принят"), "{state:#?}");
    assert!(state.login_shown, "no login form: {state:#?}");
    assert!(state.login_error_shown, "no error shown: {state:#?}");
    assert!(
        state
            .login_error
            .chars()
            .filter(|c| c.is_alphabetic())
            .count()
            > 10,
        "the error is not in words: {state:#?}"
    );
    assert!(state.cards.is_empty(), "{state:#?}");

    // A call to the operator does not reach a refused page.
    incoming_call(&gw, CALLER).await;
    sleep(Duration::from_millis(300)).await;
    let state = browser.state().await.expect("page state");
    assert!(state.cards.is_empty(), "{state:#?}");

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn the_page_shows_the_calls_a_restarted_gateway_sends() {
    let mut gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    see_three_calls(&mut browser, &gw).await;

    // The gateway goes away; the page notices and retries.
    let addr = gw.addr;
    gw.stop().await;
    browser
        .wait_for("the connection as lost", |s| s.status_class == "retrying")
        .await;
    let gw = restart(gw).await;
    assert_eq!(gw.addr, addr);
    // A call before the page is back: the page gets it when it reconnects
    // (after=3 from the last run), or live if it was quicker.
    call_and_see(
        &mut browser,
        &gw,
        OPERATOR_KEY,
        UNKNOWN_CALLER,
        4,
        "+79990000000",
    )
    .await;
    let state = browser
        .wait_for("the status pill as connected", |s| {
            s.status_class == "connected"
        })
        .await;
    assert!(!state.login_shown, "{state:#?}");
    assert_eq!(gw.gateway().hub().subscriber_count(OPERATOR_KEY), Some(1));
    // Then live ones, whatever their numbers on this run.
    call_and_see(&mut browser, &gw, OPERATOR_KEY, "89165555555", 5, "Ромашка").await;
    call_and_see(
        &mut browser,
        &gw,
        OPERATOR_KEY,
        UNKNOWN_CALLER,
        6,
        "+79990000000",
    )
    .await;

    let state = browser.state().await.expect("page state");
    let titles: Vec<&str> = state.cards.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles.len(), 6, "{titles:?}");
    assert!(titles[0].contains("+79990000000"), "{titles:?}");
    assert!(titles[1].contains("Ромашка"), "{titles:?}");
    assert!(titles[2].contains("+79990000000"), "{titles:?}");
    assert!(
        titles[3..].iter().all(|t| t.contains("Фэйковый чиж")),
        "{titles:?}"
    );
    assert!(state.cards.iter().all(|c| c.shown), "{state:#?}");
    assert_eq!(
        state
            .cards
            .iter()
            .filter(|c| c.class.contains("latest"))
            .count(),
        1,
        "{state:#?}"
    );

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_token_change_starts_clean_and_closes_the_old_operators_socket() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    see_three_calls(&mut browser, &gw).await;

    // Another operator's token in the fragment: the page closes the first
    // operator's socket, forgets their cards and numbers, and takes the
    // second's key.
    browser
        .eval(&format!("location.hash = 'token={OTHER_TOKEN}'"))
        .await;
    let hub = gw.gateway().hub();
    until("the page on the other operator's key only", || {
        hub.subscriber_count(OTHER_KEY) == Some(1) && hub.subscriber_count(OPERATOR_KEY) == Some(0)
    })
    .await;
    let state = browser
        .wait_for("the other operator's name and no card", |s| {
            s.operator == "Оператор: Петров" && s.cards.is_empty()
        })
        .await;
    assert!(state.url.ends_with("/operator"), "{state:#?}");
    call_and_see(
        &mut browser,
        &gw,
        OTHER_KEY,
        UNKNOWN_CALLER,
        1,
        "+79990000000",
    )
    .await;
    // The first operator's calls no longer reach this page.
    incoming_call(&gw, CALLER).await;
    call_and_see(&mut browser, &gw, OTHER_KEY, "89165555555", 2, "Ромашка").await;
    sleep(Duration::from_millis(300)).await;
    let state = browser.state().await.expect("page state");
    assert_eq!(state.cards.len(), 2, "{state:#?}");
    assert!(
        state
            .cards
            .iter()
            .all(|c| !c.title.contains("Фэйковый чиж")),
        "{state:#?}"
    );
    assert_eq!(state.status_class, "connected", "{state:#?}");
    assert_eq!(hub.subscriber_count(OPERATOR_KEY), Some(0));

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_token_with_a_plus_is_accepted_from_the_fragment_as_is_or_encoded() {
    let gw = start(&plus_operator()).await;

    // As written in a bookmark: `+` and `/` as they are.
    let mut browser = open_connected_page(&gw, PLUS_TOKEN).await;
    let state = browser.state().await.expect("page state");
    assert!(!state.login_shown, "the token was refused: {state:#?}");
    call_and_see(&mut browser, &gw, PLUS_KEY, CALLER, 1, "Фэйковый чиж").await;

    // Percent-encoded, as encodeURIComponent writes it: the same token.
    let encoded = PLUS_TOKEN
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    browser
        .open(&format!("http://{}/operator#token={encoded}", gw.addr))
        .await;
    let state = browser
        .wait_for("the second page as connected", |s| {
            s.status_class == "connected"
        })
        .await;
    assert!(!state.login_shown, "the token was refused: {state:#?}");
    // The first call is still within popup.replay_age: the new page shows
    // it too, then the live one.
    call_and_see(
        &mut browser,
        &gw,
        PLUS_KEY,
        UNKNOWN_CALLER,
        2,
        "+79990000000",
    )
    .await;
    let hub = gw.gateway().hub();
    assert_eq!(
        hub.subscriber_count(PLUS_KEY),
        Some(2),
        "both pages connected"
    );

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn the_policy_blocks_inline_script_and_style_in_the_browser() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    // What an injection would try: markup with a script and a style.
    let injected = r#"(() => {
      const script = document.createElement("script");
      script.textContent = "window.__injected = true;";
      document.body.append(script);
      const style = document.createElement("style");
      style.textContent = "header { background: rgb(255, 0, 0); }";
      document.head.append(style);
      return window.__injected === true;
    })()"#;
    let ran = browser
        .call(
            "Runtime.evaluate",
            json!({ "expression": injected, "returnByValue": true }),
        )
        .await;
    assert_eq!(
        ran["result"]["value"],
        json!(false),
        "inline script ran: {ran}"
    );
    let state = browser
        .wait_for("both violations reported", |s| s.csp_violations.len() >= 2)
        .await;
    assert!(
        state
            .csp_violations
            .iter()
            .any(|v| v.starts_with("script-src")),
        "{:?}",
        state.csp_violations
    );
    assert!(
        state
            .csp_violations
            .iter()
            .any(|v| v.starts_with("style-src")),
        "{:?}",
        state.csp_violations
    );
    assert_eq!(state.header_background, HEADER_BACKGROUND, "{state:#?}");
    // Dropped, not closed: close() asserts no violations.
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn the_page_works_with_allowed_origins_that_do_not_list_it() {
    let gw = start("[popup]\nallowed_origins = [\"https://crm.example.ru\"]\n").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    incoming_call(&gw, CALLER).await;
    browser
        .wait_for("the caller's card", |s| {
            s.cards.iter().any(|c| c.title.contains("Фэйковый чиж"))
        })
        .await;
    browser.close().await;
}

/// The page's title as written in `assets/operator.html`.
const PAGE_TITLE: &str = "Входящие звонки — cti-gateway";

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_reload_during_a_call_shows_it_again_marked_earlier() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    call_and_see(&mut browser, &gw, OPERATOR_KEY, CALLER, 1, "Фэйковый чиж").await;
    let state = browser.state().await.expect("page state");
    assert!(!state.cards[0].class.contains("earlier"), "{state:#?}");

    // F5 while it rings (`at` has whole seconds: the reload is in a later one).
    sleep(Duration::from_millis(1100)).await;
    browser.call("Page.reload", json!({})).await;
    let state = browser
        .wait_for("the ringing call shown again", |s| {
            s.status_class == "connected" && s.cards.len() == 1
        })
        .await;
    assert!(state.url.ends_with("/operator"), "{state:#?}");
    assert!(state.cards[0].title.contains("Фэйковый чиж"), "{state:#?}");
    assert!(state.cards[0].class.contains("earlier"), "{state:#?}");
    assert_eq!(state.operator, "Оператор: Иванова", "{state:#?}");

    // A live call after it is not marked.
    call_and_see(
        &mut browser,
        &gw,
        OPERATOR_KEY,
        UNKNOWN_CALLER,
        2,
        "+79990000000",
    )
    .await;
    let state = browser.state().await.expect("page state");
    assert!(!state.cards[0].class.contains("earlier"), "{state:#?}");
    assert!(state.cards[1].class.contains("earlier"), "{state:#?}");

    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn leaving_the_page_closes_its_socket() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    let hub = gw.gateway().hub();
    until("one screen", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(1)
    })
    .await;
    let navigated = browser
        .call("Page.navigate", json!({ "url": "about:blank" }))
        .await;
    assert!(navigated.get("errorText").is_none(), "{navigated}");
    until("no screen once the page is left", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(0)
    })
    .await;
    // Back: a fresh page (never kept in the back/forward cache), one screen.
    browser
        .call(
            "Page.navigate",
            json!({ "url": format!("http://{}/operator", gw.addr) }),
        )
        .await;
    browser
        .wait_for("the status pill as connected", |s| {
            s.status_class == "connected"
        })
        .await;
    until("one screen again", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(1)
    })
    .await;
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_typed_token_beats_a_stale_fragment_after_a_reload() {
    let gw = start("").await;
    // A bookmark with an outdated token.
    let mut browser = open_operator_page(&gw, "outdated-token").await;
    let state = browser
        .wait_for("the token as refused", |s| s.login_shown)
        .await;
    assert!(!state.url.contains("token="), "{state:#?}");
    browser
        .eval(&format!(
            r#"document.getElementById("token").value = "{OPERATOR_TOKEN}";
               document.getElementById("login").requestSubmit(); true"#
        ))
        .await;
    browser
        .wait_for("connected with the typed token", |s| {
            s.status_class == "connected" && s.operator == "Оператор: Иванова"
        })
        .await;
    browser.call("Page.reload", json!({})).await;
    let state = browser
        .wait_for("connected with the typed token after the reload", |s| {
            s.status_class == "connected" && s.operator == "Оператор: Иванова"
        })
        .await;
    assert!(!state.login_shown, "{state:#?}");
    assert!(!state.url.contains("token="), "{state:#?}");
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn only_the_last_50_cards_are_kept_over_200_calls() {
    let gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    for i in 0..200 {
        incoming_call(&gw, &format!("8999{i:07}")).await;
    }
    let state = browser
        .wait_for("the 200th call on top", |s| {
            s.cards
                .first()
                .is_some_and(|c| c.title.contains("+79990000199"))
        })
        .await;
    assert_eq!(state.cards.len(), 50, "{:?}", state.cards.len());
    assert!(
        state.cards[49].title.contains("+79990000150"),
        "{:?}",
        state.cards[49]
    );
    assert!(
        state.height < 8000.0,
        "the page is {} px high",
        state.height
    );
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_long_name_wraps_and_the_manager_and_address_are_shown() {
    let name = "Ж".repeat(300);
    let directory = format!(
        "{{\"id\":\"z9\",\"name\":\"{name}\",\"manager_name\":\"Смирнова Ольга\",\"manager_phone\":\"245\",\"address\":\"г. Москва, ул. Тверская, д. 1\",\"phones\":[\"84957770000\"]}}\n"
    );
    let gw = start_with(&directory, "").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    incoming_call(&gw, "84957770000").await;
    let state = browser.wait_for("the card", |s| s.cards.len() == 1).await;
    let card = &state.cards[0];
    assert_eq!(card.title, name);
    assert!(!card.overflows, "the card overflows: {card:#?}");
    assert!(!state.overflows, "the page scrolls sideways");
    assert_eq!(card.field("Менеджер"), Some("Смирнова Ольга"), "{card:#?}");
    assert_eq!(card.field("Менеджер (доб.)"), Some("245"), "{card:#?}");
    assert_eq!(
        card.field("Адрес"),
        Some("г. Москва, ул. Тверская, д. 1"),
        "{card:#?}"
    );
    browser.close().await;
}

/// Stands in for the browser's notifications, sound and visibility, so a
/// test can see what the page asks for: `window.__asked` (permission
/// requests), `__notes` (notifications shown), `__tones` (tones started),
/// and `__hidden` (set to hide the tab; then dispatch `visibilitychange`).
const ALERT_STUBS: &str = r#"
window.__asked = 0; window.__notes = []; window.__tones = 0; window.__hidden = false;
window.Notification = class {
  constructor(title, options) { window.__notes.push(title + " / " + ((options && options.body) || "")); }
  static requestPermission() { window.__asked++; window.Notification.permission = "granted"; return Promise.resolve("granted"); }
};
window.Notification.permission = "default";
window.AudioContext = class {
  get currentTime() { return 0; }
  get destination() { return {}; }
  resume() { return Promise.resolve(); }
  createOscillator() { return { frequency: {}, connect() {}, start() { window.__tones++; }, stop() {} }; }
  createGain() { return { gain: {}, connect() {} }; }
};
Object.defineProperty(document, "hidden", { get: () => window.__hidden });
Object.defineProperty(document, "visibilityState", { get: () => (window.__hidden ? "hidden" : "visible") });
"#;

/// Hides (or shows) the tab as far as the page can tell.
async fn set_hidden(browser: &mut Browser, hidden: bool) {
    browser
        .eval(&format!(
            "window.__hidden = {hidden}; document.dispatchEvent(new Event('visibilitychange')); true"
        ))
        .await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn sound_and_notifications_are_off_until_switched_on_and_hidden_calls_are_counted() {
    let gw = start("").await;
    let mut browser = Browser::launch().await;
    browser
        .open_with(
            &format!("http://{}/operator#token={OPERATOR_TOKEN}", gw.addr),
            ALERT_STUBS,
        )
        .await;
    let state = browser
        .wait_for("the status pill as connected", |s| {
            s.status_class == "connected"
        })
        .await;
    assert!(!state.alerts_on, "the switch is on by default");
    assert_eq!(state.title, PAGE_TITLE);

    // Off: a call in a hidden tab only counts in the title.
    set_hidden(&mut browser, true).await;
    call_and_see(&mut browser, &gw, OPERATOR_KEY, CALLER, 1, "Фэйковый чиж").await;
    let state = browser.state().await.expect("page state");
    assert_eq!(state.title, format!("(1) {PAGE_TITLE}"));
    let seen = browser
        .eval("[window.__asked, window.__notes.length, window.__tones]")
        .await;
    assert_eq!(seen, json!([0, 0, 0]), "asked, notified, tones while off");

    // On: the permission is asked once, however often it is switched.
    for _ in 0..3 {
        browser
            .eval("document.getElementById('alerts').click(); true")
            .await;
    }
    let state = browser.state().await.expect("page state");
    assert!(state.alerts_on, "{state:#?}");
    assert_eq!(browser.eval("window.__asked").await, json!(1));

    call_and_see(
        &mut browser,
        &gw,
        OPERATOR_KEY,
        UNKNOWN_CALLER,
        2,
        "+79990000000",
    )
    .await;
    let state = browser.state().await.expect("page state");
    assert_eq!(state.title, format!("(2) {PAGE_TITLE}"));
    let notes = browser.eval("window.__notes").await;
    assert_eq!(notes.as_array().map(Vec::len), Some(1), "{notes}");
    assert!(
        notes[0].as_str().unwrap_or("").contains("+79990000000"),
        "{notes}"
    );
    assert!(browser.eval("window.__tones").await.as_u64() > Some(0));

    // Back in view: the count goes; a call now sounds but notifies no one.
    set_hidden(&mut browser, false).await;
    let state = browser.state().await.expect("page state");
    assert_eq!(state.title, PAGE_TITLE);
    call_and_see(&mut browser, &gw, OPERATOR_KEY, "89165555555", 3, "Ромашка").await;
    let state = browser.state().await.expect("page state");
    assert_eq!(state.title, PAGE_TITLE);
    assert_eq!(browser.eval("window.__notes.length").await, json!(1));

    // Remembered in this browser, and not asked again.
    browser.call("Page.reload", json!({})).await;
    let state = browser
        .wait_for("connected after the reload", |s| {
            s.status_class == "connected"
        })
        .await;
    assert!(state.alerts_on, "{state:#?}");
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn the_retry_label_counts_down() {
    let mut gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    gw.stop().await;
    // Retries after 1, 2, then 4 s: the 4 s wait is shown as 4, then 3.
    browser
        .wait_for("a 4 s wait", |s| s.status.contains("через 4 с"))
        .await;
    let state = browser
        .wait_for("the same wait a second later", |s| {
            s.status.contains("через 3 с")
        })
        .await;
    assert_eq!(state.status_class, "retrying", "{state:#?}");
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn the_page_follows_a_seq_reset_of_a_replaced_store() {
    let mut gw = start("").await;
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    see_three_calls(&mut browser, &gw).await;
    // The store goes (replaced by an empty one): the key's numbers start
    // again at 1, below the page's last seq (3).
    gw.stop().await;
    browser
        .wait_for("the connection as lost", |s| s.status_class == "retrying")
        .await;
    for suffix in ["", "-wal", "-shm"] {
        let file = gw.dir.path().join(format!("store.sqlite{suffix}"));
        if file.exists() {
            std::fs::remove_file(&file).expect("remove the store");
        }
    }
    let gw = restart(gw).await;
    browser
        .wait_for("connected to the new store's gateway", |s| {
            s.status_class == "connected"
        })
        .await;
    call_and_see(
        &mut browser,
        &gw,
        OPERATOR_KEY,
        UNKNOWN_CALLER,
        4,
        "+79990000000",
    )
    .await;
    call_and_see(&mut browser, &gw, OPERATOR_KEY, "89165555555", 5, "Ромашка").await;
    browser.close().await;
}

#[tokio::test]
#[ignore = "needs chromium; .ci/run installs it"]
async fn a_crms_manager_and_links_are_shown_and_a_link_opens_but_never_a_javascript_one() {
    use cti_gateway::directory::model::Link;
    use cti_gateway::directory::{Overlay, OverlayManager};
    let gw = start_with(
        "{\"id\":\"l1\",\"name\":\"ООО Ссылка\",\"phones\":[\"84957770001\"]}\n",
        "",
    )
    .await;
    // What a CRM module would set: its manager, the record's page there
    // (here a page of the gateway itself, so that it loads).
    let page = format!("http://{}/healthz", gw.addr);
    gw.gateway()
        .directory()
        .set_overlays(vec![(
            "l1".into(),
            Some(Overlay {
                managers: vec![OverlayManager {
                    system: "bitrix24".into(),
                    extension: Some("301".into()),
                    name: Some("Смирнова Ольга".into()),
                    ..Default::default()
                }],
                links: vec![Link {
                    system: "bitrix24".into(),
                    kind: "company".into(),
                    url: page.clone().into(),
                }],
                phones: vec![],
                ..Default::default()
            }),
        )])
        .expect("a valid overlay");
    let mut browser = open_connected_page(&gw, OPERATOR_TOKEN).await;
    incoming_call(&gw, "84957770001").await;
    let state = browser.wait_for("the card", |s| s.cards.len() == 1).await;
    let card = &state.cards[0];
    assert_eq!(card.field("Менеджер"), Some("Смирнова Ольга"), "{card:#?}");
    assert_eq!(card.field("Менеджер (доб.)"), Some("301"), "{card:#?}");
    assert_eq!(card.field("Менеджер из"), Some("bitrix24"), "{card:#?}");
    assert_eq!(card.field("Ссылки"), Some("bitrix24: company"), "{card:#?}");
    let anchors = |selector: &str| {
        format!(
            "[...document.querySelectorAll({selector:?})].map((a) => [a.getAttribute('href'), a.target, a.rel])"
        )
    };
    let found = browser.eval(&anchors("article.card a")).await;
    assert_eq!(
        found,
        json!([[page, "_blank", "noopener noreferrer"]]),
        "the card's links"
    );

    // The link opens in a new tab (a click with a user's gesture: the
    // browser blocks a tab a script opens on its own).
    browser
        .call(
            "Runtime.evaluate",
            json!({
                "expression": "document.querySelector('article.card a').click(), true",
                "userGesture": true,
            }),
        )
        .await;
    let deadline = Instant::now() + PAGE_LIMIT;
    loop {
        let targets = browser.call("Target.getTargets", json!({})).await;
        let opened = targets["targetInfos"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["type"] == "page" && t["url"] == page));
        if opened {
            break;
        }
        assert!(Instant::now() < deadline, "no tab opened {page}: {targets}");
        sleep(Duration::from_millis(50)).await;
    }

    // A message whose links are not http(s) (the gateway refuses them; a
    // card must not trust that): none becomes a link, the good one does.
    browser
        .eval(
            r#"showCall({seq: 1000, at: new Date().toISOString(), number: "+74957770002",
                counterparty: {id: "x", name: "Злая ссылка", phones: [], links: [
                  {system: "evil", kind: "a", url: "javascript:alert(1)"},
                  {system: "evil", kind: "b", url: " JaVaScRiPt:alert(2)"},
                  {system: "evil", kind: "c", url: "data:text/html,<script>alert(3)</script>"},
                  {system: "evil", kind: "d", url: "//evil.example/"},
                  {system: "good", kind: "e", url: "https://portal.example/crm/1/"}]}}), true"#,
        )
        .await;
    let state = browser
        .wait_for("the second card", |s| s.cards.len() == 2)
        .await;
    assert_eq!(
        state.cards[0].field("Ссылки"),
        Some("good: e"),
        "{state:#?}"
    );
    let found = browser.eval(&anchors("article.card a")).await;
    let hrefs: Vec<&str> = found
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a[0].as_str())
        .collect();
    assert!(
        hrefs
            .iter()
            .all(|h| h.starts_with("http://") || h.starts_with("https://")),
        "{hrefs:?}"
    );
    assert!(state.csp_violations.is_empty(), "{state:#?}");
    browser.close().await;
}
