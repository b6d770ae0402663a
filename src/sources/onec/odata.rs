//! A client of 1C's standard OData interface (v3, JSON): URLs, auth,
//! timeouts, bounded answers, and 1C's error shape turned into errors that
//! say what to do.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::{OnecConfig, Secret};

/// What stays unencoded in a path segment or a query value: the unreserved
/// characters plus the few OData writes literally (`$top`, `guid'…'`,
/// `Ref_Key,LineNumber`). Everything else, Cyrillic and spaces included, is
/// percent-encoded as UTF-8 (`%20` for a space, never `+`).
const ODATA: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b',');

/// The largest answer accepted for one request: a page of a thousand rows
/// is well under a megabyte; anything near this is not what was asked for.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// How a request to 1C failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OdataError {
    #[error("1C refused the credentials (HTTP 401) for {what}: check {credentials} and the user's rights to the OData interface")]
    Unauthorized {
        what: String,
        /// The keys (and environment variables) the credentials came from.
        credentials: &'static str,
    },
    #[error("1C answered HTTP {status} for {what}: {message}{}", code_note(.code))]
    Status {
        status: u16,
        what: String,
        /// `odata.error`'s `code` (1C's `-1` for an error in its code, `13`
        /// for a direct POST of tabular section rows), when the answer had one.
        code: Option<String>,
        /// `odata.error`'s message, or the start of whatever else came.
        message: String,
    },
    #[error("1C did not answer {what} within {timeout:?} ({timeout_key})")]
    Timeout {
        what: String,
        timeout: Duration,
        timeout_key: &'static str,
    },
    #[error("cannot reach 1C for {what}: {cause} (check onec.odata_url and the network)")]
    Transport { what: String, cause: String },
    #[error("1C's answer to {what} is not the OData JSON expected: {cause}")]
    Format { what: String, cause: String },
    #[error("1C's answer to {what} is larger than {MAX_ANSWER_BYTES} bytes; lower onec.page_size")]
    TooLarge { what: String },
}

/// ` (odata.error code "13")` after a message, when 1C gave a code.
fn code_note(code: &Option<String>) -> String {
    match code {
        Some(code) => format!(" (odata.error code {code:?})"),
        None => String::new(),
    }
}

/// Which of 1C's users a client speaks as: the keys its credentials and
/// timeout come from, for the errors that send someone to them.
#[derive(Debug, Clone, Copy)]
struct Role {
    credentials: &'static str,
    timeout_key: &'static str,
}

const READER: Role = Role {
    credentials: "onec.username and onec.password (CTI_ONEC_USERNAME, CTI_ONEC_PASSWORD)",
    timeout_key: "onec.timeout",
};

const WRITER: Role = Role {
    credentials: "sync.onec.write_username and sync.onec.write_password (CTI_ONEC_WRITE_USERNAME, CTI_ONEC_WRITE_PASSWORD)",
    timeout_key: "sync.onec.timeout",
};

/// A request to send: its method and JSON body (none for a GET).
enum Request<'a> {
    Get,
    Post(&'a [u8]),
    Patch(&'a [u8]),
}

pub struct OdataClient {
    http: reqwest::Client,
    /// `odata_url` without a trailing slash.
    base: String,
    username: String,
    password: Option<Secret>,
    timeout: Duration,
    role: Role,
}

impl OdataClient {
    /// The read client: `[onec]`'s user, `onec.timeout`.
    pub fn new(config: &OnecConfig) -> Result<OdataClient, OdataError> {
        OdataClient::build(
            config,
            config.username.clone(),
            config.password.clone(),
            config.timeout,
            READER,
        )
    }

    /// The write client of the 1C writer: a user of its own
    /// (`[sync.onec] write_username`/`write_password`), so that the read
    /// user stays read-only; `timeout` is `[sync.onec] timeout`.
    pub fn writer(
        config: &OnecConfig,
        username: &str,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Result<OdataClient, OdataError> {
        OdataClient::build(config, username.to_owned(), password, timeout, WRITER)
    }

    fn build(
        config: &OnecConfig,
        username: String,
        password: Option<Secret>,
        timeout: Duration,
        role: Role,
    ) -> Result<OdataClient, OdataError> {
        // reqwest is built without a default TLS provider; ring is ours. A
        // second install (another gateway in the same process) is refused
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("cti-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OdataError::Transport {
                what: "setting up the HTTP client".into(),
                cause: e.to_string(),
            })?;
        Ok(OdataClient {
            http,
            base: config.odata_url.trim_end_matches('/').to_owned(),
            username,
            password,
            timeout,
            role,
        })
    }

    /// The URL of `resource` (an entity set, or `Set(guid'…')`) with `query`
    /// options; `$format=json` is always asked for.
    pub fn url(&self, resource: &str, query: &[(&str, &str)]) -> String {
        self.url_of(&[resource], query)
    }

    /// The URL of the path `segments` (`Set(guid'…')`, `Post`), each
    /// percent-encoded, with `query` options after `$format=json`.
    fn url_of(&self, segments: &[&str], query: &[(&str, &str)]) -> String {
        let mut url = self.base.clone();
        for segment in segments {
            url.push('/');
            url.extend(utf8_percent_encode(segment, ODATA));
        }
        url.push_str("?$format=json");
        for (name, value) in query {
            url.push('&');
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(value, ODATA));
        }
        url
    }

    /// GETs `resource` and returns the answer's body; `what` names the
    /// request in errors. `timeout` overrides `onec.timeout` when shorter.
    pub async fn get(
        &self,
        resource: &str,
        query: &[(&str, &str)],
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Bytes, OdataError> {
        let url = self.url(resource, query);
        self.send(Request::Get, &url, what, timeout).await
    }

    /// POSTs the JSON `body` to the entity set `set` (a create): 1C answers
    /// the created entity (`Ref_Key`, `Code`, `DataVersion`…).
    pub async fn post(&self, set: &str, body: &[u8], what: &str) -> Result<Bytes, OdataError> {
        let url = self.url(set, &[]);
        self.send(Request::Post(body), &url, what, None).await
    }

    /// PATCHes `entity` (`Set(guid'…')`) with the JSON `body`: only the
    /// properties it names change; a tabular section in it replaces all
    /// of that section's rows.
    pub async fn patch(&self, entity: &str, body: &[u8], what: &str) -> Result<Bytes, OdataError> {
        let url = self.url(entity, &[]);
        self.send(Request::Patch(body), &url, what, None).await
    }

    /// POSTs to an action of `entity`: `Document_X(guid'…')/Post` with
    /// `query` `PostingModeOperational=false` posts a document, `…/Unpost`
    /// un-posts it.
    pub async fn action(
        &self,
        entity: &str,
        action: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Bytes, OdataError> {
        let url = self.url_of(&[entity, action], query);
        self.send(Request::Post(b""), &url, what, None).await
    }

    /// Sends one request with the client's credentials, reads the answer
    /// within [`MAX_ANSWER_BYTES`] and turns 1C's refusals into errors.
    async fn send(
        &self,
        request: Request<'_>,
        url: &str,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Bytes, OdataError> {
        let timeout = timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let builder = match request {
            Request::Get => self.http.get(url),
            Request::Post(body) => self.json_body(self.http.post(url), body),
            Request::Patch(body) => self.json_body(self.http.patch(url), body),
        };
        let mut request = builder
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if !self.username.is_empty() || self.password.is_some() {
            request = request.basic_auth(
                &self.username,
                self.password.as_ref().map(|p| p.expose().to_owned()),
            );
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                OdataError::Timeout {
                    what: what.to_owned(),
                    timeout,
                    timeout_key: self.role.timeout_key,
                }
            } else {
                OdataError::Transport {
                    what: what.to_owned(),
                    // Without the URL: it can carry credentials someone put there.
                    cause: error_chain(&e.without_url()),
                }
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(OdataError::TooLarge { what: what.into() });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(OdataError::TooLarge { what: what.into() });
            }
            body.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(OdataError::Unauthorized {
                what: what.into(),
                credentials: self.role.credentials,
            });
        }
        if !status.is_success() {
            let (code, message) = odata_error(&body);
            return Err(OdataError::Status {
                status: status.as_u16(),
                what: what.into(),
                code,
                message,
            });
        }
        Ok(body.freeze())
    }

    fn json_body(&self, builder: reqwest::RequestBuilder, body: &[u8]) -> reqwest::RequestBuilder {
        builder
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json;charset=utf-8",
            )
            .body(body.to_vec())
    }
}

/// The code and text of 1C's `{"odata.error":{"code":…,"message":{"value":…}}}`,
/// or no code and the start of whatever else came.
fn odata_error(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "odata.error")]
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        code: serde_json::Value,
        message: Message,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        value: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => {
            let code = match e.error.code {
                serde_json::Value::String(code) => Some(code),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            };
            (code, e.error.message.value)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                "no details in the answer".into()
            } else {
                text.chars().take(200).collect()
            };
            (None, message)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> OdataClient {
        let config: crate::config::OnecConfig =
            toml::from_str(&format!("odata_url = \"{url}\"")).expect("minimal [onec] parses");
        OdataClient::new(&config).expect("client")
    }

    #[test]
    fn cyrillic_names_and_filter_values_are_percent_encoded_as_utf8() {
        let c = client("http://1c/base/odata/standard.odata/");
        let url = c.url(
            "Catalog_Контрагенты_КонтактнаяИнформация",
            &[
                ("$filter", "substringof('9250452343', НомерТелефона)"),
                ("$top", "50"),
            ],
        );
        assert_eq!(
            url,
            "http://1c/base/odata/standard.odata/Catalog_%D0%9A%D0%BE%D0%BD%D1%82%D1%80%D0%B0%D0%B3%D0%B5%D0%BD%D1%82%D1%8B_%D0%9A%D0%BE%D0%BD%D1%82%D0%B0%D0%BA%D1%82%D0%BD%D0%B0%D1%8F%D0%98%D0%BD%D1%84%D0%BE%D1%80%D0%BC%D0%B0%D1%86%D0%B8%D1%8F?$format=json&$filter=substringof('9250452343',%20%D0%9D%D0%BE%D0%BC%D0%B5%D1%80%D0%A2%D0%B5%D0%BB%D0%B5%D1%84%D0%BE%D0%BD%D0%B0)&$top=50"
        );
        // Characters that would change the query's shape never pass through.
        let url = c.url("Set", &[("$filter", "a&b=c+d#e")]);
        assert!(url.ends_with("$filter=a%26b%3Dc%2Bd%23e"), "{url}");
    }

    #[test]
    fn odata_errors_are_read_for_their_code_and_message() {
        let body =
            r#"{"odata.error":{"code":"-1","message":{"lang":"ru","value":"Ошибка сервера"}}}"#;
        assert_eq!(
            odata_error(body.as_bytes()),
            (Some("-1".to_owned()), "Ошибка сервера".to_owned())
        );
        let numeric = r#"{"odata.error":{"code":13,"message":{"value":"Cоздание строк"}}}"#;
        assert_eq!(odata_error(numeric.as_bytes()).0.as_deref(), Some("13"));
        assert_eq!(
            odata_error(b"  "),
            (None, "no details in the answer".to_owned())
        );
        assert_eq!(
            odata_error(b"<html>502</html>"),
            (None, "<html>502</html>".to_owned())
        );
        let e = OdataError::Status {
            status: 500,
            what: "a create".into(),
            code: Some("-1".into()),
            message: "Ошибка сервера".into(),
        };
        assert_eq!(
            e.to_string(),
            "1C answered HTTP 500 for a create: Ошибка сервера (odata.error code \"-1\")"
        );
    }

    /// Serves one connection on 127.0.0.1: reads one request (head and
    /// `Content-Length` body) and answers `answer`; hands back what came.
    async fn one_answer(
        status: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let url = format!(
            "http://{}/base/odata/standard.odata",
            listener.local_addr().expect("addr")
        );
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = conn.read(&mut buf).await.expect("read");
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())
                                .flatten()
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            conn.write_all(answer.as_bytes()).await.expect("write");
            conn.shutdown().await.ok();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (url, task)
    }

    fn writer(url: &str) -> OdataClient {
        let config: crate::config::OnecConfig =
            toml::from_str(&format!("odata_url = \"{url}\"")).expect("minimal [onec] parses");
        OdataClient::writer(
            &config,
            "writer",
            Some(Secret::new("w-secret")),
            Duration::from_secs(5),
        )
        .expect("client")
    }

    #[tokio::test]
    async fn a_post_sends_json_with_the_write_user_and_returns_the_entity() {
        let (url, seen) = one_answer("201 Created", r#"{"Ref_Key":"k","Code":"1"}"#).await;
        let body = writer(&url)
            .post("Catalog_Контрагенты", br#"{"Description":"A"}"#, "a create")
            .await
            .expect("created");
        assert_eq!(&body[..], br#"{"Ref_Key":"k","Code":"1"}"#);
        let seen = seen.await.expect("server");
        assert!(
            seen.starts_with("POST /base/odata/standard.odata/Catalog_%D0%9A"),
            "{seen}"
        );
        assert!(seen.contains("?$format=json HTTP/1.1"), "{seen}");
        // base64("writer:w-secret")
        assert!(
            seen.contains("authorization: Basic d3JpdGVyOnctc2VjcmV0"),
            "{seen}"
        );
        assert!(seen.contains("content-type: application/json"), "{seen}");
        assert!(seen.ends_with(r#"{"Description":"A"}"#), "{seen}");
    }

    #[tokio::test]
    async fn a_patch_keeps_1c_s_error_code() {
        let (url, seen) = one_answer(
            "400 Bad Request",
            r#"{"odata.error":{"code":"13","message":{"lang":"ru","value":"no"}}}"#,
        )
        .await;
        let e = writer(&url)
            .patch(
                "Catalog_X(guid'00000000-0000-0000-0000-000000000001')",
                b"{}",
                "an update",
            )
            .await
            .expect_err("refused");
        match e {
            OdataError::Status {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(
                    (status, code.as_deref(), message.as_str()),
                    (400, Some("13"), "no")
                );
            }
            other => panic!("{other:?}"),
        }
        let seen = seen.await.expect("server");
        assert!(
            seen.starts_with("PATCH /base/odata/standard.odata/Catalog_X(guid'00000000-0000-0000-0000-000000000001')?$format=json "),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn an_action_posts_to_the_entity_s_action_path() {
        let (url, seen) = one_answer("200 OK", "").await;
        writer(&url)
            .action(
                "Document_Y(guid'00000000-0000-0000-0000-000000000002')",
                "Post",
                &[("PostingModeOperational", "false")],
                "posting",
            )
            .await
            .expect("posted");
        let seen = seen.await.expect("server");
        assert!(
            seen.starts_with("POST /base/odata/standard.odata/Document_Y(guid'00000000-0000-0000-0000-000000000002')/Post?$format=json&PostingModeOperational=false "),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn the_write_user_s_401_names_the_write_keys() {
        let (url, _seen) = one_answer("401 Unauthorized", "").await;
        let e = writer(&url)
            .post("Catalog_X", b"{}", "a create")
            .await
            .expect_err("refused");
        assert!(matches!(e, OdataError::Unauthorized { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("sync.onec.write_password"), "{text}");
        assert!(!text.contains("w-secret"), "{text}");
    }
}
