//! A sync system's webhooks (issue 18 item 7): `POST
//! /api/v1/sync/{system}/webhook`, `/webhook/{name}` for a system with
//! several hooks, `/webhook/{secret}` for one whose remote can neither sign
//! nor send a token (the system says which: [`System::webhook_path`]).
//!
//! No Bearer: the system authenticates each hook itself (its signature,
//! token or secret segment, in constant time). In order: the system's
//! `[sync.<system>] allow_from` (403, checked by the route table before
//! anything is read), the method, the size (at most [`MAX_WEBHOOK_BODY`]:
//! 413), [`System::authenticate`] (401), [`System::parse`] (400 naming
//! what; nothing stored), the system's waiting rows against `[sync]
//! max_pending` (503), then the body is committed to the inbox (group
//! commit) and only then answered 200. A failed commit is a 503: nothing
//! acknowledged is ever lost, and what was refused the remote sends again
//! or the next reconcile finds. Every refusal is counted in
//! `cti_sync_inbox_refused_total{system,reason}`; a failed authentication
//! is logged at most once a minute per address, the secret segment never.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use super::allow::AllowList;
use super::auth::RefusalLog;
use super::body::{self, BodyError};
use super::client::Client;
use super::respond::{json, json_error, with_header, Body};
use crate::config::Config;
use crate::store::Store;
use crate::sync::inbox::{InboxMetrics, Stored};
use crate::sync::system::{Headers, System, Webhook, WebhookPath};

/// The sync API's per-system paths: `{PREFIX}{system}/{action}`.
pub const PREFIX: &str = "/api/v1/sync/";

/// The largest webhook body taken.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// Bodies up to this size are checked on the request's task, larger ones
/// on the blocking pool (as the push API parses its bodies).
const INLINE_CHECK_BYTES: usize = 64 * 1024;

/// Webhooks that failed their system's authentication, logged at most once
/// a minute per address.
static REFUSALS: RefusalLog = RefusalLog::new("sync webhook");

/// `/api/v1/sync/{system}/{action}[/{segment}]`, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemPath<'a> {
    pub system: &'a str,
    pub action: &'a str,
    /// The one segment after the action, if any.
    pub segment: Option<&'a str>,
}

/// `path` as a per-system path; `None` for another path or one with more
/// segments than one after the action.
pub fn system_path(path: &str) -> Option<SystemPath<'_>> {
    let rest = path.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let system = parts.next().filter(|s| !s.is_empty())?;
    let action = parts.next().filter(|s| !s.is_empty())?;
    let segment = match parts.next() {
        None => None,
        Some(s) if !s.is_empty() && !s.contains('/') => Some(s),
        Some(_) => return None,
    };
    Some(SystemPath {
        system,
        action,
        segment,
    })
}

/// Whether `path` is a webhook's.
pub fn is_webhook(path: &str) -> bool {
    system_path(path).is_some_and(|p| p.action == "webhook")
}

/// The path as logs may show it: a webhook's last segment (maybe a
/// secret) left out.
pub fn loggable(path: &str) -> std::borrow::Cow<'_, str> {
    match system_path(path) {
        Some(p) if p.action == "webhook" && p.segment.is_some() => {
            format!("{PREFIX}{}/webhook/…", p.system).into()
        }
        _ => path.into(),
    }
}

/// A system whose webhooks this gateway takes.
struct Hooked {
    system: Arc<dyn System>,
    allow: AllowList,
    /// Wakes the system's inbox task after a commit.
    wake: Arc<Notify>,
}

/// The webhook endpoints, built once at start-up.
pub struct Webhooks {
    systems: HashMap<String, Hooked>,
    store: Option<Store>,
    /// Why the sync store did not open, when the systems are registered
    /// without one: their webhooks are answered 503, nothing acknowledged.
    store_failed: Option<String>,
    metrics: Option<InboxMetrics>,
    max_pending: u64,
    body_read_timeout: Duration,
}

impl Webhooks {
    pub fn new(config: &Config) -> Webhooks {
        Webhooks {
            systems: HashMap::new(),
            store: None,
            store_failed: None,
            metrics: None,
            max_pending: config.sync.max_pending,
            body_read_timeout: config.server.body_read_timeout,
        }
    }

    /// Takes the webhooks of `systems` (each with the waker of its inbox
    /// task) into `store`'s inbox.
    pub fn serve(
        &mut self,
        config: &Config,
        store: Store,
        systems: Vec<(Arc<dyn System>, Arc<Notify>)>,
        metrics: InboxMetrics,
    ) {
        self.register(config, systems);
        self.store = Some(store);
        self.metrics = Some(metrics);
    }

    /// Registers `systems` though the sync store failed to open (`why`):
    /// their webhooks pass the allow-list and are then answered 503 (the
    /// remote keeps the change, or the next reconcile finds it), not 404 as
    /// if the gateway had never heard of the system.
    pub fn store_failed(&mut self, config: &Config, systems: Vec<Arc<dyn System>>, why: String) {
        let wake = Arc::new(Notify::new());
        self.register(
            config,
            systems
                .into_iter()
                .map(|s| (s, Arc::clone(&wake)))
                .collect(),
        );
        self.store_failed = Some(why);
    }

    fn register(&mut self, config: &Config, systems: Vec<(Arc<dyn System>, Arc<Notify>)>) {
        for (system, wake) in systems {
            let name = system.spec().name().to_owned();
            let list = config
                .sync
                .system(&name)
                .map(|t| t.allow_from.clone())
                .unwrap_or_default();
            // The key is logged with each refusal.
            let allow = AllowList::new(format!("sync.{name}.allow_from"), &list);
            self.systems.insert(
                name,
                Hooked {
                    system,
                    allow,
                    wake,
                },
            );
        }
    }

    /// The allow-list of the system a webhook path names, if it has one
    /// (an unknown system has none: it is answered 404).
    pub fn allow_list(&self, path: &str) -> Option<&AllowList> {
        let p = system_path(path)?;
        self.systems.get(p.system).map(|h| &h.allow)
    }

    /// Counts a webhook refused by its system's allow-list.
    pub fn refused_address(&self, path: &str) {
        if let (Some(p), Some(metrics)) = (system_path(path), &self.metrics) {
            if self.systems.contains_key(p.system) {
                metrics.refused(p.system, "address");
            }
        }
    }

    /// `POST /api/v1/sync/{system}/webhook[/{segment}]`.
    pub async fn receive(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let Some(p) = system_path(&path).filter(|p| p.action == "webhook") else {
            return not_found();
        };
        let Some(hooked) = self.systems.get(p.system) else {
            return not_found();
        };
        let (Some(store), Some(metrics)) = (&self.store, &self.metrics) else {
            // Registered, but there is no sync store to commit to. Why it
            // failed was logged at start and is in /readyz; an
            // unauthenticated caller is not told (paths, SQLite's words).
            let why = self.store_failed.as_deref().unwrap_or("not opened");
            tracing::debug!(system = p.system, error = %why, "sync webhook refused: the sync store is unavailable");
            return busy("the sync store is unavailable; nothing was stored: send it again later");
        };
        let kind = hooked.system.webhook_path();
        if p.segment.is_some() && kind == WebhookPath::Plain {
            return not_found();
        }
        if req.method() != Method::POST {
            let message = format!(
                "method {} is not allowed here: a system POSTs its webhooks",
                req.method()
            );
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return with_header(refused, header::ALLOW, "POST");
        }
        let system = p.system;
        let (head, body) = req.into_parts();
        let body_head = body::BodyHead::of(&head.headers);
        let body = match body::read_body(body, body_head, MAX_WEBHOOK_BODY, self.body_read_timeout)
            .await
        {
            Ok(body) => body,
            Err(e) => {
                if matches!(e, BodyError::TooLarge { .. }) {
                    metrics.refused(system, "too_large");
                }
                return json_error(e.status(), &e.to_string());
            }
        };
        let (name, secret) = match kind {
            WebhookPath::Named => (p.segment, None),
            WebhookPath::Secret => (None, p.segment),
            WebhookPath::Plain => (None, None),
        };
        // A large body's check (a signature over it, its JSON) runs on the
        // blocking pool: the calls' threads never wait behind a megabyte.
        let checked = if body.len() <= INLINE_CHECK_BYTES {
            check(&*hooked.system, name, secret, &head.headers, &body)
        } else {
            let system = Arc::clone(&hooked.system);
            let (name, secret) = (name.map(str::to_owned), secret.map(str::to_owned));
            let (headers, bytes) = (head.headers.clone(), body.clone());
            tokio::task::spawn_blocking(move || {
                check(
                    &*system,
                    name.as_deref(),
                    secret.as_deref(),
                    &headers,
                    &bytes,
                )
            })
            .await
            .unwrap_or_else(|e| Err(Refused::Malformed(format!("the check failed: {e}"))))
        };
        match checked {
            Ok(()) => {}
            Err(Refused::Unauthenticated) => {
                metrics.refused(system, "unauthenticated");
                REFUSALS.refused(
                    &loggable(&path),
                    client,
                    &"the system's authentication of the webhook failed",
                );
                return json_error(
                    StatusCode::UNAUTHORIZED,
                    "the webhook is not authenticated: check the token, signature or address the system was given",
                );
            }
            Err(Refused::Malformed(what)) => {
                metrics.refused(system, "malformed");
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("{what}; nothing was stored"),
                );
            }
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            metrics.refused(system, "malformed");
            return json_error(
                StatusCode::BAD_REQUEST,
                "the webhook's body is not UTF-8 text; nothing was stored",
            );
        };
        match store.sync_depth(system).await {
            Ok(depth) if depth.inbox.max(depth.outbox) >= self.max_pending => {
                metrics.refused(system, "full");
                tracing::warn!(
                    system,
                    inbox = depth.inbox,
                    outbox = depth.outbox,
                    max_pending = self.max_pending,
                    "sync webhook refused: the system has sync.max_pending rows waiting; the reconcile catches up"
                );
                return busy(&format!(
                    "{} rows of {system} are waiting (sync.max_pending is {}): send again later; nothing was stored",
                    depth.inbox.max(depth.outbox),
                    self.max_pending
                ));
            }
            Ok(_) => {}
            Err(e) => {
                metrics.refused(system, "commit_failed");
                tracing::error!(system, error = %e, "sync webhook refused: the inbox could not be counted");
                return busy("the sync store cannot be read now; nothing was stored");
            }
        }
        let stored = Stored {
            name: name.map(str::to_owned),
            content_type: head
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body: text.to_owned(),
        };
        match store.inbox_append(system, stored.encode()).await {
            Ok(id) => {
                metrics.received(system);
                hooked.wake.notify_one();
                tracing::debug!(system, row = id, "sync webhook committed to the inbox");
                json(StatusCode::OK, &serde_json::json!({ "received": id }))
            }
            Err(e) => {
                metrics.refused(system, "commit_failed");
                tracing::error!(system, error = %e, "sync webhook refused: the inbox commit failed");
                busy("the webhook could not be stored; nothing was acknowledged: send it again")
            }
        }
    }
}

/// Why a webhook's check refused it.
enum Refused {
    Unauthenticated,
    /// What the system's parse named.
    Malformed(String),
}

/// The system's [`System::authenticate`], then its [`System::parse`].
fn check(
    system: &dyn System,
    name: Option<&str>,
    secret: Option<&str>,
    headers: &header::HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let hook = Webhook {
        name,
        secret,
        headers: Headers(&headers),
        body,
    };
    if !system.authenticate(&hook) {
        return Err(Refused::Unauthenticated);
    }
    system
        .parse(&hook)
        .map(drop)
        .map_err(|e| Refused::Malformed(e.to_string()))
}

fn not_found() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "no such webhook: POST /api/v1/sync/{system}/webhook for a system this gateway syncs",
    )
}

/// 503 with `Retry-After`.
fn busy(message: &str) -> Response<Body> {
    with_header(
        json_error(StatusCode::SERVICE_UNAVAILABLE, message),
        header::RETRY_AFTER,
        "30",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_system_paths_split_and_secrets_stay_out_of_logs() {
        assert_eq!(
            system_path("/api/v1/sync/crm/webhook"),
            Some(SystemPath {
                system: "crm",
                action: "webhook",
                segment: None
            })
        );
        assert_eq!(
            system_path("/api/v1/sync/crm/webhook/s3cret").and_then(|p| p.segment),
            Some("s3cret")
        );
        for other in [
            "/api/v1/sync/crm",
            "/api/v1/sync//webhook",
            "/api/v1/sync/crm/webhook/a/b",
            "/api/v1/sync/crm/webhook/",
            "/api/v1/calls",
        ] {
            assert_eq!(system_path(other), None, "{other}");
        }
        assert!(is_webhook("/api/v1/sync/crm/webhook"));
        assert!(!is_webhook("/api/v1/sync/crm/initial"));
        assert_eq!(
            loggable("/api/v1/sync/crm/webhook/s3cret"),
            "/api/v1/sync/crm/webhook/…"
        );
        assert_eq!(loggable("/api/v1/sync/status"), "/api/v1/sync/status");
    }
}
