//! The runtime the WebSocket screens' tasks run on: one per process, beside
//! the one that serves HTTP.
//!
//! Why: a pop-up to 1,000 screens wakes 1,000 tasks that each write a frame,
//! milliseconds of work for two cores. On the runtime that serves HTTP every
//! task woken after them waits in the same run queues, the PBX's
//! `IncomingCall` among them: its answer waits for the journal's commit, and
//! the journal's writer thread wakes it behind the whole fan-out (measured:
//! answer p50 5 ms with 1,000 screens against 0.8 ms with none). On a runtime
//! of their own the screens leave the HTTP workers idle, and the kernel
//! shares the cores between both, so a woken answer runs at once.
//!
//! Its workers are as many as the cores (tokio's default), named
//! `cti-screens`. It is built on first use and lives as long as the process
//! (gateways started one after another in a process, as the tests do, share
//! it). If it cannot be built (no thread can be started), screens run on the
//! caller's runtime, as they did before, and that is logged once.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// Runs a screen's task on the screens' runtime.
pub(super) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match RUNTIME.get_or_init(build) {
        Some(runtime) => drop(runtime.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

fn build() -> Option<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("cti-screens")
        .enable_all()
        .build()
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot start the screens' runtime: screens share the HTTP runtime");
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_screens_threads() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name);
        });
        let name = rx.await.expect("the task ran");
        assert_eq!(name.as_deref(), Some("cti-screens"));
    }
}
