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
    #[error("1C refused the credentials (HTTP 401) for {what}: check onec.username and onec.password (CTI_ONEC_USERNAME, CTI_ONEC_PASSWORD) and the user's rights to the OData interface")]
    Unauthorized { what: String },
    #[error("1C answered HTTP {status} for {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error("1C did not answer {what} within {timeout:?} (onec.timeout)")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot reach 1C for {what}: {cause} (check onec.odata_url and the network)")]
    Transport { what: String, cause: String },
    #[error("1C's answer to {what} is not the OData JSON expected: {cause}")]
    Format { what: String, cause: String },
    #[error("1C's answer to {what} is larger than {MAX_ANSWER_BYTES} bytes; lower onec.page_size")]
    TooLarge { what: String },
}

pub struct OdataClient {
    http: reqwest::Client,
    /// `odata_url` without a trailing slash.
    base: String,
    username: String,
    password: Option<Secret>,
    timeout: Duration,
}

impl OdataClient {
    pub fn new(config: &OnecConfig) -> Result<OdataClient, OdataError> {
        // reqwest is built without a default TLS provider; ring is ours. A
        // second install (another gateway in the same process) is refused
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
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
            username: config.username.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
        })
    }

    /// The URL of `resource` (an entity set, or `Set(guid'…')`) with `query`
    /// options; `$format=json` is always asked for.
    pub fn url(&self, resource: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!(
            "{}/{}?$format=json",
            self.base,
            utf8_percent_encode(resource, ODATA)
        );
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
        let timeout = timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let url = self.url(resource, query);
        let mut request = self
            .http
            .get(&url)
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
            return Err(OdataError::Unauthorized { what: what.into() });
        }
        if !status.is_success() {
            return Err(OdataError::Status {
                status: status.as_u16(),
                what: what.into(),
                message: odata_error_message(&body),
            });
        }
        Ok(body.freeze())
    }
}

/// The text of 1C's `{"odata.error":{"code":…,"message":{"value":…}}}`, or
/// the start of whatever else came.
fn odata_error_message(body: &[u8]) -> String {
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
        Ok(e) => format!(
            "{} (odata.error code {})",
            e.error.message.value, e.error.code
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no details in the answer".into()
            } else {
                text.chars().take(200).collect()
            }
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
    fn odata_errors_are_read_for_their_message() {
        let body =
            r#"{"odata.error":{"code":"-1","message":{"lang":"ru","value":"Ошибка сервера"}}}"#;
        assert_eq!(
            odata_error_message(body.as_bytes()),
            "Ошибка сервера (odata.error code \"-1\")"
        );
        assert_eq!(odata_error_message(b"  "), "no details in the answer");
        assert_eq!(odata_error_message(b"<html>502</html>"), "<html>502</html>");
    }
}
