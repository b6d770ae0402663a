//! The accept loop: connections in, each served on its own task.
//!
//! Shaped after mini-redis's `Listener`: semaphores cap open connections
//! (`limits.rs`: in all, per client address, and the PBX's reserved
//! ones), every connection is watched for graceful shutdown, and the loop
//! itself does nothing but accept. A new connection must deliver its first
//! request head (after its TLS handshake) within
//! `server.first_request_timeout`; after that, slow or idle clients are cut
//! off by the header read timeout, which also runs while a keep-alive
//! connection waits for its next request ([`HeadWait`]: one timer per
//! connection, not one per request as hyper's own).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::auth::RefusalLog;
use super::client::RequestId;
use super::limits::{Admission, Refusal};
use super::Front;
use crate::config::ServerConfig;

const MAX_HEADERS: usize = 64;

/// Runs the accept loop until `shutdown` resolves, then lets requests in
/// flight finish for up to `shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    front: Arc<Front>,
    settings: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let refusals = ConnectionRefusals::new(&front);
    // What a connection reached when its socket cannot say.
    let listening = listener.local_addr().unwrap_or(settings.listen);
    // Shutdown, as in mini-redis: a signal tells connections to finish, and
    // each connection holds a sender of `all_done`; when the last one drops,
    // `recv` returns None and every connection has finished.
    let stop = Arc::new(StopSignal::default());
    let (all_done_tx, mut all_done_rx) = mpsc::channel::<()>(1);
    let mut builder = http1::Builder::new();
    // No timer for hyper: its header read timeout arms one per request (an
    // allocation and a timer-wheel entry each, 3-6% of SayName's requests/s
    // on two cores); `HeadWait` times the heads instead, per connection.
    builder
        .keep_alive(true)
        .max_buf_size(super::head::MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    tokio::pin!(shutdown);
    // Connections since start-up: the first half of every request id.
    let mut next_connection: u64 = 0;

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let admission = match front.limits().admit(peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                // Closed without a word: an answer would be a write to
                // every socket of a flood, and a client that has sent
                // nothing yet is not waiting for one.
                refusals.refused(refusal, peer, settings);
                drop(stream);
                continue;
            }
        };
        next_connection += 1;
        let connection = Connection {
            id: next_connection,
            peer,
            // The address the client reached: the WSDL's default (one
            // getsockname per connection, never per request).
            local: stream.local_addr().unwrap_or(listening),
            admission,
            stop: StopSignal::stopped(&stop),
            done: all_done_tx.clone(),
            // The header timeout runs for the first head too: the
            // shorter of the two is when it must have come.
            first_request_by: accepted_at
                + settings
                    .first_request_timeout
                    .min(settings.header_read_timeout),
            head_wait: Arc::new(HeadWait::new(accepted_at)),
            header_read_timeout: settings.header_read_timeout,
        };
        connection.serve(&builder, stream, &front);
    }

    drop(listener);
    stop.stop();
    drop(all_done_tx);
    tokio::select! {
        _ = all_done_rx.recv() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace_s = settings.shutdown_grace.as_secs_f64(), "connections still open after the shutdown grace period; closing them");
        }
    }
}

/// Counts and logs connections closed at accept, by reason: each reason
/// warned of at most once a minute (a flood writes no log line per
/// connection), the rest at debug level.
struct ConnectionRefusals {
    by_reason: [(Refusal, prometheus::IntCounter, RefusalLog); 3],
    /// `cti_http_connections_refused_total`: closed for want of a slot.
    no_slot: prometheus::IntCounter,
}

impl ConnectionRefusals {
    fn new(front: &Front) -> ConnectionRefusals {
        let metrics = front.metrics();
        ConnectionRefusals {
            by_reason: Refusal::ALL.map(|reason| {
                let counter = metrics
                    .http_refused
                    .with_label_values(&[CONNECTION, reason.label()]);
                (reason, counter, RefusalLog::new("connection"))
            }),
            no_slot: metrics.http_connections_refused.clone(),
        }
    }

    fn refused(&self, refusal: Refusal, peer: SocketAddr, settings: &ServerConfig) {
        let Some((_, counter, log)) = self.by_reason.iter().find(|(r, ..)| *r == refusal) else {
            return;
        };
        counter.inc();
        let why = match refusal {
            Refusal::PerAddress => {
                "its address has server.max_connections_per_address open (exempt: server.trusted_proxies and soap.allow_from)"
            }
            Refusal::Reserved => {
                self.no_slot.inc();
                "only the server.reserved_connections slots are free, which are kept for soap.allow_from and server.trusted_proxies"
            }
            Refusal::MaxConnections => {
                self.no_slot.inc();
                "server.max_connections are open"
            }
        };
        let reason = refusal.label();
        if log.warning_due() {
            tracing::warn!(%peer, reason, why, max_connections = settings.max_connections, per_address = settings.max_connections_per_address, "connection refused at accept (repeats within a minute are logged at debug level and counted in cti_http_refused_total{{endpoint=\"connection\"}})");
        } else {
            tracing::debug!(%peer, reason, why, "connection refused at accept");
        }
    }
}

/// The `endpoint` label of what is refused before any request is read.
const CONNECTION: &str = "connection";

/// The `reason` of a connection closed before its first request head.
const FIRST_REQUEST_TIMEOUT: &str = "first_request_timeout";

/// One accepted connection and what it holds while it lives.
struct Connection {
    /// Its number since start-up: the first half of its requests' ids.
    id: u64,
    peer: SocketAddr,
    /// The gateway's address the connection reached.
    local: SocketAddr,
    /// Its slot and its place in its address's count.
    admission: Admission,
    /// When its first request head must have arrived (the TLS handshake
    /// included), or it is closed.
    first_request_by: Instant,
    /// Since when it has been waiting for a request head.
    head_wait: Arc<HeadWait>,
    /// How long it may wait for a later request head (keep-alive).
    header_read_timeout: Duration,
    /// Resolves when the server stops.
    stop: Stopped,
    /// Dropped when the connection ends: the accept loop's count of the living.
    done: mpsc::Sender<()>,
}

impl Connection {
    /// Serves the connection's requests on a task of its own (after the
    /// TLS handshake, which must end by `first_request_by`, when the
    /// listener speaks TLS); on shutdown, finishes the request in flight and
    /// closes.
    fn serve(self, builder: &http1::Builder, stream: TcpStream, front: &Arc<Front>) {
        let peer = self.peer;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let front = Arc::clone(front);
        let builder = builder.clone();
        let gauge = front.metrics().http_connections.clone();
        gauge.inc();
        tokio::spawn(async move {
            match front.tls().cloned() {
                // The plain socket as it is: the WebSocket transport takes
                // it back from hyper by this type (to cap its send buffer).
                None => self.drive(&builder, stream, front, false).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout_at(self.first_request_by, handshake).await {
                        Ok(Ok(tls_stream)) => self.drive(&builder, tls_stream, front, true).await,
                        Ok(Err(e)) => {
                            front.metrics().tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            front.metrics().tls_handshake_failures.inc();
                            first_request_late(&front);
                            tracing::debug!(%peer, "TLS handshake not finished within server.first_request_timeout");
                        }
                    }
                }
            }
            gauge.dec();
        });
    }

    /// Runs hyper's connection over `io` until it ends, the server stops,
    /// or no request head has come by `first_request_by`; then frees the
    /// connection's slot (the admission and the sender of the living,
    /// dropped with `self`).
    async fn drive<I>(self, builder: &http1::Builder, io: I, front: Arc<Front>, over_tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let peer_ip = peer.ip();
        let local = self.local;
        let head_wait = Arc::clone(&self.head_wait);
        let connection = self.id;
        let handler = Arc::clone(&front);
        let service = service_fn(move |req| {
            // One store when the head is in, one clock read and store when
            // the answer is made: this connection's own, shared with no other.
            let request = RequestId {
                connection,
                number: head_wait.request_in(),
            };
            let head_wait = Arc::clone(&head_wait);
            let answered = move || head_wait.answered();
            Arc::clone(&handler).handle(req, peer_ip, local, over_tls, request, answered)
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut stop = self.stop;
        {
            tokio::pin!(conn);
            // Fires at most once per timeout: when it does, the deadline is
            // worked out from what the connection did meanwhile.
            let mut deadline = Deadline::at(self.first_request_by);
            let result = loop {
                tokio::select! {
                    biased;
                    result = conn.as_mut() => break Some(result),
                    () = &mut stop => {
                        // Finish the request in flight, then close; idle connections close now.
                        conn.as_mut().graceful_shutdown();
                        break Some(conn.as_mut().await);
                    }
                    () = &mut deadline => {
                        let now = Instant::now();
                        match self.head_wait.deadline(self.first_request_by, self.header_read_timeout, now) {
                            Some(later) => deadline.reset(later),
                            None if !self.head_wait.any_request() => {
                                // Dropping hyper's connection closes the socket.
                                first_request_late(&front);
                                tracing::debug!(%peer, "connection closed: no request head within server.first_request_timeout");
                                break None;
                            }
                            None => {
                                tracing::debug!(%peer, "connection closed: no request head within server.header_read_timeout");
                                break None;
                            }
                        }
                    }
                }
            };
            if let Some(Err(e)) = result {
                // Timeouts, resets, malformed requests: the client's problem, not ours.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        drop(self.admission);
        drop(self.done);
    }
}

/// Since when a connection has been waiting for a request head: from
/// accept, then from each answer on (keep-alive), never while a request is
/// being answered. What hyper's header read timeout measured, kept without
/// a timer per request: the connection's one deadline timer reads it when
/// it fires.
struct HeadWait {
    /// When the connection was accepted: what `since_us` counts from.
    accepted: Instant,
    /// Microseconds from `accepted` to the last answer; [`ANSWERING`]
    /// while a request is being answered; 0 before the first request.
    since_us: AtomicU64,
    /// Request heads so far.
    requests: AtomicU64,
}

/// `HeadWait::since_us` while a request is being answered.
const ANSWERING: u64 = u64::MAX;

impl HeadWait {
    fn new(accepted: Instant) -> HeadWait {
        HeadWait {
            accepted,
            since_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// A request head is in: its number on the connection, from 1.
    fn request_in(&self) -> u64 {
        self.since_us.store(ANSWERING, Ordering::Relaxed);
        // Only this connection's task counts here: no other core touches it.
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Its answer is made: the wait for the next head starts.
    fn answered(&self) {
        let us = Instant::now()
            .saturating_duration_since(self.accepted)
            .as_micros();
        self.since_us.store(
            u64::try_from(us).unwrap_or(ANSWERING - 1),
            Ordering::Relaxed,
        );
    }

    fn any_request(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }

    /// When the connection must be looked at again, or `None` when the head
    /// it waits for is late: before the first request, `first_request_by`;
    /// while answering, a header timeout from now; while waiting on
    /// keep-alive, a header timeout from the last answer.
    fn deadline(
        &self,
        first_request_by: Instant,
        header: Duration,
        now: Instant,
    ) -> Option<Instant> {
        let due = if !self.any_request() {
            first_request_by
        } else {
            match self.since_us.load(Ordering::Relaxed) {
                ANSWERING => return Some(now + header),
                us => self.accepted + Duration::from_micros(us) + header,
            }
        };
        (due > now).then_some(due)
    }
}

/// A connection's deadline timer, looked at only when it may have fired.
///
/// `select!` polls every branch each time the connection's task wakes (each
/// read and write), and a tokio `Sleep` polled that often costs about 400
/// instructions a SayName (callgrind: the coop budget, the entry's state,
/// the waker's registration) for a timer that fires once per timeout. So
/// the sleep is polled with a waker of its own, which marks that it fired
/// before it wakes the task: between firings a poll is one atomic load.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    timer: Arc<TimerWake>,
    /// `timer` as the waker the sleep is polled with.
    timer_waker: Waker,
    /// The task's waker as last left with `timer` (a task's does not change).
    task: Option<Waker>,
    /// The sleep has been polled since it was last set, so it will wake `timer`.
    armed: bool,
}

/// What the sleep of a [`Deadline`] wakes: a mark, then the task.
#[derive(Default)]
struct TimerWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl std::task::Wake for TimerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Deadline {
    fn at(when: Instant) -> Deadline {
        let timer = Arc::new(TimerWake::default());
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(when)),
            timer_waker: Waker::from(Arc::clone(&timer)),
            timer,
            task: None,
            armed: false,
        }
    }

    /// Fires at `when` instead.
    fn reset(&mut self, when: Instant) {
        self.sleep.as_mut().reset(when);
        self.armed = false;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *this
                .timer
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            this.task = Some(task);
        }
        if this.armed && !this.timer.fired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a firing from here on is seen next time.
        this.timer.fired.store(false, Ordering::Relaxed);
        let mut timer_cx = Context::from_waker(&this.timer_waker);
        match this.sleep.as_mut().poll(&mut timer_cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                this.armed = true;
                Poll::Pending
            }
        }
    }
}

/// Counts a connection closed for want of a first request head in time.
fn first_request_late(front: &Front) {
    front
        .metrics()
        .http_refused
        .with_label_values(&[CONNECTION, FIRST_REQUEST_TIMEOUT])
        .inc();
}

/// Tells every open connection to finish. A connection waiting for it pays
/// one atomic load each time its task runs: a `watch` channel's `changed()`
/// takes a lock shared by every connection at each poll, 1-2% of a
/// SayName's CPU under load on two cores.
#[derive(Default)]
struct StopSignal {
    stopping: AtomicBool,
    /// The tasks to wake when it stops, by connection.
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

impl StopSignal {
    fn stopped(signal: &Arc<StopSignal>) -> Stopped {
        Stopped {
            signal: Arc::clone(signal),
            id: signal.next_id.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves once its [`StopSignal`] stops.
struct Stopped {
    signal: Arc<StopSignal>,
    id: u64,
    /// The waker left with the signal (a task's waker does not change).
    registered: Option<Waker>,
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.stopping.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            self.signal.wakers().insert(self.id, waker.clone());
            self.registered = Some(waker);
            // A stop between the load above and the insert missed this waker.
            if self.signal.stopping.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.signal.wakers().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_every_waiting_connection_and_later_ones_see_it_at_once() {
        let signal = Arc::new(StopSignal::default());
        let waiting: Vec<_> = (0..3)
            .map(|_| tokio::spawn(StopSignal::stopped(&signal)))
            .collect();
        tokio::task::yield_now().await;
        signal.stop();
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("woken")
                .expect("task");
        }
        StopSignal::stopped(&signal).await;
        assert!(signal.wakers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_polled_on_every_wake_fires_once_its_time_comes_and_after_a_reset_at_the_new_time(
    ) {
        let t0 = Instant::now();
        let mut deadline = Deadline::at(t0 + Duration::from_secs(5));
        // Polled as the connection's task is, on wake-ups of its own.
        for _ in 0..3 {
            assert!(futures_util::poll!(&mut deadline).is_pending());
        }
        tokio::time::timeout(Duration::from_secs(6), &mut deadline)
            .await
            .expect("fired at 5 s");
        assert_eq!(Instant::now(), t0 + Duration::from_secs(5));
        deadline.reset(t0 + Duration::from_secs(35));
        assert!(futures_util::poll!(&mut deadline).is_pending());
        (&mut deadline).await;
        assert_eq!(Instant::now(), t0 + Duration::from_secs(35));
    }

    const HEADER: Duration = Duration::from_secs(30);

    #[test]
    fn a_connection_without_a_request_is_due_at_its_first_request_deadline() {
        let t0 = Instant::now();
        let wait = HeadWait::new(t0);
        let first_by = t0 + Duration::from_secs(5);
        assert_eq!(wait.deadline(first_by, HEADER, t0), Some(first_by));
        assert_eq!(wait.deadline(first_by, HEADER, first_by), None);
    }

    #[test]
    fn a_request_being_answered_is_never_late_and_keep_alive_waits_count_from_the_answer() {
        let t0 = Instant::now();
        let wait = HeadWait::new(t0);
        let first_by = t0 + Duration::from_secs(5);
        wait.request_in();
        let later = t0 + Duration::from_secs(100);
        // Answering: looked at again a header timeout on.
        assert_eq!(wait.deadline(first_by, HEADER, later), Some(later + HEADER));
        wait.answered();
        let due = wait
            .deadline(first_by, HEADER, t0)
            .expect("a fresh answer leaves the whole timeout");
        assert!(
            due >= t0 + HEADER && due <= Instant::now() + HEADER,
            "{due:?}"
        );
        assert_eq!(wait.deadline(first_by, HEADER, due), None);
        assert!(wait.any_request());
    }
}
