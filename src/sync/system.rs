//! What a system (a CRM, SERVIO, 1C as a target) gives the sync runtime:
//! its registration ([`SystemSpec`]), its published limits, how to send a
//! batch of outbox rows and what became of each, how to find a record it
//! already holds before creating one, and how to read its webhooks. Each
//! CRM's module implements [`System`] with its API client and field
//! mapping; the runtime (workers, limiter, retries, inbox) is the same for
//! every system.
//!
//! The trait's methods that speak to the remote return boxed futures so
//! that systems can be held as `Arc<dyn System>`, one per `[sync.<name>]`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::store::{OutboxOp, Store};
use crate::sync::inbound::Inbound;
use crate::sync::registry::SystemSpec;

/// A future a system's remote call returns: boxed, so that [`System`] is
/// usable as a trait object.
pub type RemoteFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The rate a system's API publishes, which the runtime's limiter keeps to
/// unless `[sync.<name>]` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PublishedLimit {
    /// A leaky bucket: `burst` requests at once, refilled at `per_second`
    /// (Bitrix24: 50 and 2/s; Enterprise 250 and 5/s).
    Bucket { burst: u32, per_second: f64 },
    /// Requests at least `interval` apart, no burst (amoCRM: 7/s, 143 ms).
    Interval { interval: Duration },
    /// At most `requests` in any `window` (Bpium: 100 per 30 s).
    Window { requests: u32, window: Duration },
}

/// One outbox row as the runtime hands it to [`System::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRow {
    /// The outbox row's id: ascending per record.
    pub id: i64,
    /// The system's kind of record (`company`): the id-map's kind.
    pub kind: String,
    /// The local record's id (the id-map's `local_id`).
    pub record_key: String,
    pub op: OutboxOp,
    /// What to send, as the feed wrote it (JSON).
    pub body: String,
    /// The record's id in the system, when the id-map links one: an update,
    /// not a create. `None` for a create: the runtime has called
    /// [`System::find_existing`] first.
    pub remote_id: Option<String>,
    /// The system's version of the record as last confirmed, if it has one.
    pub remote_version: Option<String>,
}

/// A record the system holds, as it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub remote_id: String,
    pub remote_version: Option<String>,
    /// What the write came to, for a system that reports it
    /// ([`System::reports_outcomes`]): stored with the row and handed to
    /// the record's originating system ([`System::linked`]). `None`: not
    /// reported (the runtime stores nothing for the row).
    pub report: Option<Report>,
}

impl Remote {
    /// A confirmation with nothing to report.
    pub fn new(remote_id: impl Into<String>, remote_version: Option<String>) -> Remote {
        Remote {
            remote_id: remote_id.into(),
            remote_version,
            report: None,
        }
    }
}

pub use crate::store::{RowOutcome, WriteOutcome};

/// What a confirming system reports of a write beyond the remote id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcome: WriteOutcome,
    /// The system's own code for the record (1C's `Code`), if it has one.
    pub code: Option<String>,
}

/// What became of one row [`System::send`] was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The system holds the row's change (for a `remove`: marked, never
    /// hard-deleted). The runtime deletes the row in the transaction that
    /// writes the id-map row.
    Confirmed(Remote),
    /// A failure worth trying again (5xx, timeout, refused connection,
    /// malformed answer): after the backoff.
    Retry(String),
    /// The system's limit was hit: the whole system waits (`retry_after`
    /// when the system said how long), the row's attempts do not grow.
    Limited { retry_after: Option<Duration> },
    /// The system refuses all work until someone acts (amoCRM's 403 page,
    /// Bitrix24's `OVERLOAD_LIMIT`): sending stops, probes only.
    Blocked(String),
    /// The system refused this row for good (its validation error): the row
    /// is dead at once, with this message.
    Permanent(String),
}

/// A webhook request as the inbox received it (already bounded in size).
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    /// `/api/v1/sync/{system}/webhook/{name}`: the hook's name, where a
    /// system has several (Bpium); `None` for `/webhook`.
    pub name: Option<&'a str>,
    /// The path's secret segment, for systems that can neither sign nor send
    /// a token (amoCRM's legacy webhooks).
    pub secret: Option<&'a str>,
    pub headers: Headers<'a>,
    pub body: &'a [u8],
}

/// A webhook's request headers, as the HTTP front hands them over: names
/// and raw values, borrowed from the request. Not hyper's `HeaderMap`: only
/// `http` speaks hyper (ARCHITECTURE.md), and a system needs no more than
/// to read a header or two (a signature, a token).
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a [(&'a str, &'a [u8])]);

impl<'a> Headers<'a> {
    /// The first value of header `name` (compared without case).
    pub fn get(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| HeaderValue(v))
    }
}

/// A header's raw value (read as `hyper`'s would be: `as_bytes`, `to_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderValue<'a>(pub &'a [u8]);

impl<'a> HeaderValue<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The value as text, if it is visible ASCII (as hyper's `to_str`).
    pub fn to_str(&self) -> Option<&'a str> {
        self.0
            .iter()
            .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
            .then(|| std::str::from_utf8(self.0).ok())
            .flatten()
    }
}

/// Why a webhook's body was not taken: answered 400 naming `what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook body refused: {what}")]
pub struct WebhookError {
    pub what: String,
}

/// What the last segment of `/api/v1/sync/{system}/webhook/{segment}`
/// is to a system ([`System::webhook_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookPath {
    /// `/webhook` only: a path with a segment is a 404.
    #[default]
    Plain,
    /// `/webhook/{name}`, the hook's name ([`Webhook::name`]), where a
    /// system has several (Bpium); `/webhook` too, with no name.
    Named,
    /// `/webhook/{secret}` ([`Webhook::secret`]), only where the remote can
    /// neither sign nor send a token (amoCRM's legacy webhooks). The
    /// segment is never logged.
    Secret,
}

/// A record of a system's list, for a relink: its record and the external
/// id the gateway wrote on it (the local record key), if the system keeps one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub record: Inbound,
    pub external_id: Option<String>,
}

/// One page of [`System::list_linked`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedPage {
    pub records: Vec<Listed>,
    /// Where the next page starts; `None`: this was the last.
    pub next: Option<String>,
}

/// One page of a system's records, for a relink (`after` pages on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Inbound>,
    /// Where the next page starts; `None`: this was the last.
    pub next: Option<String>,
}

/// What a started system is handed once the sync store is open, before
/// any send ([`System::attach`]).
pub struct Attach<'a> {
    /// The sync store: conflicts, the id-map, the requisites.
    pub store: &'a Store,
    /// The gateway's metrics registry, for the system's own metrics.
    pub registry: &'a prometheus::Registry,
    /// The change feed, told of links the system closes itself
    /// ([`crate::sync::Feed::note_hashes`]); `None` when it does not run.
    pub feed: Option<&'a crate::sync::Feed>,
    /// The system's limiter (the one its worker takes a token from before
    /// each call), for a system whose one call may make several requests
    /// (the 1C writer: a create's POST, then its bank account's): it takes
    /// a token for each request after a call's first itself. `None` when
    /// no limiter was set up for it.
    pub limiter: Option<&'a std::sync::Arc<crate::sync::limiter::Limiter>>,
}

/// A system the runtime keeps in step with the directory.
pub trait System: Send + Sync + 'static {
    /// Its registration: name, record kind, dedupe key, exports, fields.
    fn spec(&self) -> &SystemSpec;

    /// The limit its API publishes.
    fn published_limit(&self) -> PublishedLimit;

    /// At most this many rows in one [`System::send`] (its batch API's size;
    /// 1 where there is none).
    fn batch_size(&self) -> usize;

    /// Sends `rows` (at most [`System::batch_size`], each of another record)
    /// and says what became of each, in the same order, one outcome per row.
    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>>;

    /// Before a create: the system's record for this row if it already holds
    /// one (by the external id the gateway writes, then the business key),
    /// so that a crash between the remote's accept and our commit never
    /// creates a record twice. `Err` with a non-`Confirmed` outcome when the
    /// lookup itself failed.
    fn find_existing<'a>(
        &'a self,
        row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>>;

    /// Whether a webhook comes from the system (its signature, token or
    /// secret segment), checked in constant time.
    fn authenticate(&self, hook: &Webhook<'_>) -> bool;

    /// The records a webhook reports, in the system-neutral form the
    /// inbound policy applies.
    fn parse(&self, hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError>;

    /// A page of every record the system holds, for a relink.
    fn list<'a>(&'a self, after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>>;

    /// Called once, when the sync store is open and before the first send:
    /// a system that records conflicts, closes id-map links or reads
    /// requisites itself (the 1C writer) keeps the store, and registers its
    /// own metrics. By default nothing.
    fn attach(&self, _parts: &Attach<'_>) {}

    /// Whether the runtime keeps what each write to this system came to
    /// ([`Remote::report`], and `failed` for a row made dead) by row, for
    /// the outbox listing and the record's originating system
    /// ([`System::linked`]). By default not.
    fn reports_outcomes(&self) -> bool {
        false
    }

    /// A write of one of this system's records (its key names this system:
    /// `bitrix24:company:2919`) to another system came to `outcome` (1C
    /// created it, with its `Ref_Key` and `Code`, or had it already): a CRM
    /// module may write the code back to its record. Called after the
    /// outcome is committed, in outbox order, once per outcome; if the
    /// gateway stops before the call returns, again after the next start.
    /// By default nothing.
    fn linked<'a>(&'a self, _outcome: &'a RowOutcome) -> RemoteFuture<'a, ()> {
        Box::pin(async {})
    }

    /// What the last segment of its webhook path is ([`WebhookPath::Plain`]:
    /// none).
    fn webhook_path(&self) -> WebhookPath {
        WebhookPath::Plain
    }

    /// [`System::list`] with each record's external id (the local record
    /// key the gateway wrote on it, Bitrix24's `ORIGIN_ID`), which a relink
    /// links by first. A system that keeps one overrides this; by default
    /// no record has one and a relink links by business key only.
    fn list_linked<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> RemoteFuture<'a, Result<ListedPage, Outcome>> {
        Box::pin(async move {
            let page = self.list(after).await?;
            let records = page
                .records
                .into_iter()
                .map(|record| Listed {
                    record,
                    external_id: None,
                })
                .collect();
            Ok(ListedPage {
                records,
                next: page.next,
            })
        })
    }
}
