//! The PBX's two questions, answered: `SayName` and `IncomingCall`.
//!
//! This is the use-case layer between the HTTP front and the rest: it reads
//! the envelope (through `soap`), looks the caller up in the directory,
//! publishes pop-ups to the hub and writes the call journal. It knows no HTTP
//! and no XML; it returns bytes and what they are (an answer or whose fault)
//! for the front to send.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use crate::directory::{Counterparty, Directory, Entry, ManagerAtAnswer};
use crate::logging::{Escaped, RequestId, WarnLimiter};
use crate::metrics::{Metrics, OperationLabel, Outcome};
use crate::phone::{self, PhoneKey};
use crate::popup::{CallEvent, Hub, HubError, Queued};
use crate::soap::{self, FaultCode, Operation, Request, SoapVersion};
use crate::sources::onec::LiveLookup;
use crate::store::{CallRecord, Refusal, RefusalLog, Store};

/// How long IncomingCall waits for the journal to commit before it answers
/// with a fault; the PBX should not hang on a sick disk.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(3);

/// What a reply is, for the front to pick the transport's status from: the
/// operation's answer, or a fault and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    Answer,
    Fault(FaultCode),
}

/// A finished SOAP answer: the front sends its body as it is.
#[derive(Debug)]
pub struct SoapReply {
    pub outcome: ReplyOutcome,
    pub version: SoapVersion,
    pub body: Vec<u8>,
    /// The request wrote log lines under its id (an IncomingCall's): its
    /// answer names the id (`X-Request-Id`) even when it is a success. A
    /// SayName logs nothing and its answer carries no id.
    pub logged: bool,
}

impl SoapReply {
    /// A fault in the caller's SOAP version.
    pub fn fault(version: SoapVersion, code: FaultCode, message: &str) -> SoapReply {
        let mut body = Vec::with_capacity(512 + message.len());
        soap::write_fault(&mut body, version, code, message);
        SoapReply {
            outcome: ReplyOutcome::Fault(code),
            version,
            body,
            logged: true,
        }
    }

    fn answer(version: SoapVersion, body: Vec<u8>) -> SoapReply {
        SoapReply {
            outcome: ReplyOutcome::Answer,
            version,
            body,
            logged: false,
        }
    }
}

/// What an answer echoes of its request's envelope.
#[derive(Clone, Copy)]
struct Envelope<'a> {
    version: SoapVersion,
    namespace: &'a str,
    /// The answers' shared bytes for this version and namespace, when the
    /// request was read by its shape.
    frame: Option<&'a soap::SayNameFrame>,
}

impl<'a> From<&'a Request> for Envelope<'a> {
    fn from(request: &'a Request) -> Envelope<'a> {
        Envelope {
            version: request.version,
            namespace: &request.namespace,
            frame: None,
        }
    }
}

pub struct Vats {
    directory: Arc<Directory>,
    hub: Arc<Hub>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Asks 1C for callers the directory lacks, when `[onec]` is set.
    live: Option<LiveLookup>,
    /// Reads envelopes, a SayName of the PBX's usual shape by its number.
    reader: soap::RequestReader,
    /// Journal appends the store refused or did not confirm: logged once per
    /// change of state with a count, not once per call.
    journal_refusals: RefusalLog,
    /// IncomingCalls for a key no operator has: a warning per key at most
    /// once a minute (the PBX sends one per call).
    unknown_keys: WarnLimiter,
}

impl Vats {
    pub fn new(
        directory: Arc<Directory>,
        hub: Arc<Hub>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Vats {
        Vats {
            directory,
            hub,
            store,
            metrics,
            live: None,
            reader: soap::RequestReader::new(),
            journal_refusals: RefusalLog::new(),
            unknown_keys: WarnLimiter::new(),
        }
    }

    /// Callers the directory lacks are then asked of 1C, within its budget.
    pub fn with_live_lookup(mut self, live: LiveLookup) -> Vats {
        self.live = Some(live);
        self
    }

    /// Answers one SOAP request body. `version_hint` (from the Content-Type)
    /// is the version of a fault when the envelope itself cannot be read;
    /// `request` is the id the lines it logs name (SayName's answer logs
    /// none: it only carries the id along, two words).
    pub async fn answer(
        &self,
        body: &[u8],
        version_hint: SoapVersion,
        request: RequestId,
    ) -> SoapReply {
        let started = Instant::now();
        // The PBX's usual SayName: its number read in place, nothing copied.
        if let Some(shaped) = self.reader.read_shaped(body) {
            let envelope = Envelope {
                version: shaped.version(),
                namespace: shaped.namespace(),
                frame: Some(shaped.frame()),
            };
            let (reply, outcome) = match self.say_name_here(envelope, shaped.number()) {
                Ok(answered) => answered,
                Err(missing) => {
                    // Only a caller 1C may know waits, and not holding the
                    // shape: a guard (unlike a counted reference, whose
                    // count both cores would write on every SayName) is for
                    // short reads.
                    let (version, namespace) = (envelope.version, envelope.namespace.to_owned());
                    drop(shaped);
                    let envelope = Envelope {
                        version,
                        namespace: &namespace,
                        frame: None,
                    };
                    // Boxed: inline, its state would make every SayName's
                    // future (moved several times per request) larger.
                    Box::pin(self.say_name_live(envelope, missing)).await
                }
            };
            self.metrics
                .observe_soap(OperationLabel::SayName, outcome, started.elapsed());
            return reply;
        }
        let (reply, op, outcome) = match self.reader.read_in_full(body) {
            Err(e) => {
                // The reader's message may quote the request: escaped.
                tracing::debug!(error = %Escaped(&e.to_string()), request_id = %request, "unreadable SOAP request");
                let reply = SoapReply::fault(version_hint, FaultCode::Client, &e.to_string());
                (reply, OperationLabel::Invalid, Outcome::ClientError)
            }
            Ok(envelope) => match &envelope.operation {
                Operation::SayName { number } => {
                    let (reply, outcome) = self.say_name(Envelope::from(&envelope), number).await;
                    (reply, OperationLabel::SayName, outcome)
                }
                Operation::IncomingCall { num_from, key } => {
                    // Boxed: its future (journal, screens, timeouts) is
                    // ten times SayName's, and inline it would be moved
                    // with every SayName's future too.
                    let call = Box::pin(self.incoming_call(&envelope, num_from, key, request));
                    let (reply, outcome) = call.await;
                    (reply, OperationLabel::IncomingCall, outcome)
                }
            },
        };
        self.metrics.observe_soap(op, outcome, started.elapsed());
        reply
    }

    /// The ring-time path: a map lookup and a copy of bytes rendered at
    /// load. Only a number the directory lacks, with `[onec]` set, waits:
    /// for the live lookup, at most its budget.
    async fn say_name(&self, request: Envelope<'_>, number: &str) -> (SoapReply, Outcome) {
        match self.say_name_here(request, number) {
            Ok(answered) => answered,
            Err(missing) => Box::pin(self.say_name_live(request, missing)).await,
        }
    }

    /// SayName's answer when it needs no wait: the directory's, or "not
    /// known" when 1C is not asked. `Err` when the caller is for the live
    /// lookup ([`Vats::say_name_live`]).
    fn say_name_here(
        &self,
        request: Envelope<'_>,
        number: &str,
    ) -> Result<(SoapReply, Outcome), Missing> {
        let phone = phone::normalize(number);
        let local = self
            .directory
            .with_phone(phone, |entry, loaded| match entry {
                // Only a record whose manager is chosen now (by INN, else a
                // default: SERVIO's clients without their own) pays more
                // than the copy of its answer.
                Some(entry) if entry.manager_at_answer() => Ok(self.say_name_now(request, entry)),
                Some(entry) => Ok(say_name_reply(request, &entry.say_name)),
                None => Err(loaded),
            });
        let loaded = match local {
            Ok(reply) => return Ok((reply, Outcome::Known)),
            Err(loaded) => loaded,
        };
        match (&self.live, phone) {
            (Some(_), Some(phone)) => Err(Missing { phone, loaded }),
            _ => Ok(unknown_caller(request, loaded)),
        }
    }

    /// SayName for a caller the directory lacks, asked of 1C (boxed: the
    /// lookup's future is large, and inline it would make every SayName's
    /// future, and its moves, that large too).
    async fn say_name_live(&self, request: Envelope<'_>, missing: Missing) -> (SoapReply, Outcome) {
        if let Some(live) = &self.live {
            if let Some(entry) = Box::pin(live.find(missing.phone)).await {
                return (self.say_name_now(request, &entry), Outcome::Known);
            }
        }
        unknown_caller(request, missing.loaded)
    }

    /// The SayName answer of `entry` with the manager chosen now when its
    /// manager is chosen at answer time (`Directory::manager_source_at_answer`:
    /// an INN lookup, then the answer written with the manager's part of the
    /// other record's prepared answer, or the default's), else its prepared
    /// answer.
    fn say_name_now(&self, request: Envelope<'_>, entry: &Entry) -> SoapReply {
        let manager = self.directory.manager_source_at_answer(entry);
        let Some(manager) = manager else {
            return say_name_reply(request, &entry.say_name);
        };
        let mut body = Vec::with_capacity(512 + 2 * entry.say_name.len());
        match manager {
            ManagerAtAnswer::Record(record) => soap::write_say_name_response_with_manager_of(
                &mut body,
                request.version,
                request.namespace,
                &entry.say_name,
                &record.say_name,
            ),
            ManagerAtAnswer::Default(phone) => soap::write_say_name_response_with_manager(
                &mut body,
                request.version,
                request.namespace,
                &entry.say_name,
                &phone,
            ),
        }
        SoapReply::answer(request.version, body)
    }

    /// The caller's record: the directory's, else 1C's (live, within its budget).
    async fn find_caller(&self, phone: Option<PhoneKey>) -> Option<Arc<Entry>> {
        let phone = phone?;
        if let Some(entry) = self.directory.lookup_phone(phone) {
            return Some(entry);
        }
        Box::pin(self.live.as_ref()?.find(phone)).await
    }

    /// Queues the caller's card for the operator's screens, journals the
    /// call and answers `1` once the journal row is committed; the screens
    /// are woken while the journal commits ([`Vats::journal_and_wake`]).
    async fn incoming_call(
        &self,
        envelope: &Request,
        num_from: &str,
        key: &str,
        request: RequestId,
    ) -> (SoapReply, Outcome) {
        let (number, counterparty) = self.caller_card(num_from, request).await;
        let at = SystemTime::now();
        let event = CallEvent {
            at,
            number: number.clone(),
            raw_number: num_from.to_owned(),
            counterparty: counterparty.clone(),
        };
        let (queued, seq) = self.queue(key, &event, request);
        let delivered = queued.as_ref().map_or(0, |q| q.published().delivered);
        if queued.is_some() && delivered == 0 {
            self.metrics.incoming_calls_undelivered.inc();
        }
        let record = CallRecord {
            at,
            raw_number: num_from.to_owned(),
            number,
            key: key.to_owned(),
            counterparty_id: counterparty.as_ref().map(|c| c.id.to_string()),
            delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
            seq,
        };
        match self
            .journal_and_wake(record, delivered, queued, request)
            .await
        {
            Ok(call_id) => {
                tracing::info!(
                    call_id,
                    key,
                    known = counterparty.is_some(),
                    counterparty_id = counterparty.as_ref().map(|c| &*c.id),
                    delivered,
                    request_id = %request,
                    "incoming call"
                );
                let mut body = Vec::new();
                soap::write_incoming_call_response(
                    &mut body,
                    envelope.version,
                    &envelope.namespace,
                );
                let mut reply = SoapReply::answer(envelope.version, body);
                reply.logged = true;
                (reply, Outcome::Ok)
            }
            Err(message) => (
                SoapReply::fault(envelope.version, FaultCode::Server, &message),
                Outcome::ServerError,
            ),
        }
    }

    /// The number as screens show it (E.164 for national numbers, an
    /// extension as it came) and the caller's card, if the caller is known.
    async fn caller_card(
        &self,
        num_from: &str,
        request: RequestId,
    ) -> (String, Option<Arc<Counterparty>>) {
        let normalized = phone::normalize(num_from);
        let counterparty = self
            .find_caller(normalized)
            .await
            // The card shows what a CRM's overlay adds (the effective
            // manager, links, numbers) and a manager chosen at answer time
            // (the one SayName routed the call to); the journal keeps only
            // the id.
            .and_then(|e| match self.directory.card(&e) {
                Ok(c) => Some(Arc::new(c)),
                Err(err) => {
                    tracing::error!(id = e.id(), error = %err, request_id = %request, "directory entry unreadable; showing the caller as unknown");
                    None
                }
            });
        let number = match normalized {
            Some(k) if k.is_extension() => num_from.trim().to_owned(),
            Some(k) => k.display_e164(),
            None => num_from.trim().to_owned(),
        };
        (number, counterparty)
    }

    /// Queues the pop-up for the key's screens (not woken yet), and its
    /// `seq` (journaled, so the key's numbers continue after a restart). A
    /// key no operator has is counted, not an error for the PBX.
    fn queue(
        &self,
        key: &str,
        event: &CallEvent,
        request: RequestId,
    ) -> (Option<Queued>, Option<u64>) {
        match self.hub.queue(key, event, Some(request)) {
            Ok(queued) => {
                let seq = queued.published().seq;
                (Some(queued), Some(seq))
            }
            Err(HubError::UnknownKey) => {
                self.metrics.incoming_calls_unknown_key.inc();
                // `key` as a plain str is written with Debug: quoted, escaped.
                match self.unknown_keys.due(key) {
                    Some(repeats) => {
                        tracing::warn!(key, repeats, request_id = %request, "incoming call for a key no [[operator]] has: no screen can show it (answered 1 and journaled; check the PBX's abonent key or add an [[operator]] with it; repeats of this key within a minute are logged at debug level and counted in cti_incoming_calls_unknown_key_total)")
                    }
                    None => {
                        tracing::debug!(key, request_id = %request, "incoming call for a key no [[operator]] has")
                    }
                }
                (None, None)
            }
            Err(e @ HubError::Encode(_)) => {
                tracing::error!(error = %e, key, request_id = %request, "pop-up not published");
                (None, None)
            }
        }
    }

    /// Journals the call and wakes its screens.
    ///
    /// The row goes to the store's writer first (the future is polled once,
    /// which sends it), then the screens are woken from a task of their own,
    /// a group at a time ([`Queued::wake`]): the card reaches the screens
    /// while the disk commits, and the PBX's request, woken by the commit
    /// from the writer's thread, waits behind one group of screens' sends
    /// at most, not behind a thousand.
    async fn journal_and_wake(
        &self,
        record: CallRecord,
        delivered: usize,
        queued: Option<Queued>,
        request: RequestId,
    ) -> Result<i64, String> {
        let journal = self.journal(record, delivered, request);
        tokio::pin!(journal);
        let first = std::future::poll_fn(|cx| Poll::Ready(journal.as_mut().poll(cx))).await;
        if let Some(queued) = queued {
            queued.wake();
        }
        match first {
            Poll::Ready(journaled) => journaled,
            Poll::Pending => journal.await,
        }
    }

    /// Appends the call to the journal within [`JOURNAL_TIMEOUT`]: its row id,
    /// or the fault message for the PBX (the screens already have the card).
    async fn journal(
        &self,
        record: CallRecord,
        delivered: usize,
        request: RequestId,
    ) -> Result<i64, String> {
        let key = record.key.clone();
        match tokio::time::timeout(JOURNAL_TIMEOUT, self.store.append_call(record)).await {
            Ok(Ok(call_id)) => {
                if let Some(refused) = self.journal_refusals.saved() {
                    tracing::info!(refused, request_id = %request, "incoming calls are journaled again");
                }
                Ok(call_id)
            }
            Ok(Err(e)) => {
                match self.journal_refusals.refused() {
                    Refusal::Began => {
                        tracing::error!(error = %e, key, delivered, request_id = %request, "incoming call not journaled (further refusals are counted, not logged one by one)")
                    }
                    Refusal::Continues { since_last_line } => {
                        tracing::error!(error = %e, refused = since_last_line, request_id = %request, "incoming calls still not journaled")
                    }
                    Refusal::Counted => {}
                }
                Err(format!("the call was shown to {delivered} screen(s) but could not be written to the call journal: {e}"))
            }
            Err(_) => {
                match self.journal_refusals.refused() {
                    Refusal::Began => tracing::error!(
                        key,
                        delivered,
                        request_id = %request,
                        timeout_s = JOURNAL_TIMEOUT.as_secs(),
                        "incoming call journal write timed out (further refusals are counted, not logged one by one)"
                    ),
                    Refusal::Continues { since_last_line } => tracing::error!(
                        refused = since_last_line,
                        request_id = %request,
                        timeout_s = JOURNAL_TIMEOUT.as_secs(),
                        "incoming calls still not journaled"
                    ),
                    Refusal::Counted => {}
                }
                Err(format!(
                    "the call was shown to {delivered} screen(s) but the call journal did not confirm the write within {} s",
                    JOURNAL_TIMEOUT.as_secs()
                ))
            }
        }
    }
}

/// A SayName answer around a prepared payload.
/// A SayName caller the directory lacks, for 1C's live lookup.
struct Missing {
    phone: PhoneKey,
    /// The directory had loaded (else the answer is "not ready").
    loaded: bool,
}

/// SayName's answer for a caller nobody knows.
fn unknown_caller(request: Envelope<'_>, loaded: bool) -> (SoapReply, Outcome) {
    let outcome = if loaded {
        Outcome::Unknown
    } else {
        Outcome::NotReady
    };
    (
        say_name_reply(request, soap::unknown_caller_payload()),
        outcome,
    )
}

fn say_name_reply(request: Envelope<'_>, payload: &[u8]) -> SoapReply {
    // Empty: the writer reserves the answer's exact length, so the body
    // becomes the response without a shrink (see `http::soap::reply`).
    let mut body = Vec::new();
    match request.frame {
        Some(frame) => frame.write(&mut body, payload),
        None => {
            soap::write_say_name_response(&mut body, request.version, request.namespace, payload)
        }
    }
    SoapReply::answer(request.version, body)
}
