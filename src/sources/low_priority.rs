//! A thread for a source's bulk work (receiving and parsing a full read,
//! building its part of the directory) at the lowest scheduling priority.
//!
//! A refresh is never urgent, a ringing phone always is: on a small machine
//! a full read received and parsed on the runtime's worker threads competes
//! with SayName for the same cores and triples its tail latency. Work sent
//! here runs on its own thread with `nice 19` (Linux: per thread; threads it
//! spawns, such as the directory's parallel build, inherit it), so the
//! scheduler gives the cores to answers first and the refresh takes what is
//! left. The thread also runs under `SCHED_IDLE`, so a woken call never
//! waits for its slice (see `thread_priority`).
//!
//! The thread drives its own single-threaded tokio runtime, so whole
//! futures (an HTTP read with its sockets and timers) run here, not only
//! closures. Its tasks must not share connections with the main runtime:
//! a connection is driven by the runtime that opened it.

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) struct LowPriority {
    runtime: tokio::runtime::Handle,
    /// Dropped with the handle: the thread then ends, cancelling its tasks.
    _stop: oneshot::Sender<()>,
}

/// The worker thread is gone (it panicked in a job, or could not start).
#[derive(Debug, thiserror::Error)]
#[error("the low-priority worker thread of {0} stopped")]
pub(crate) struct WorkerGone(pub &'static str);

impl LowPriority {
    /// Starts the worker thread `name`; it ends when this handle is dropped.
    pub(crate) fn start(name: &'static str) -> std::io::Result<LowPriority> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::thread_priority::lower_current(name);
                // Tasks run while this waits; they are dropped with the runtime.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(LowPriority {
            runtime: handle,
            _stop: stop,
        })
    }

    /// Runs `future` to completion on the worker thread's runtime and waits
    /// for its result. Dropping the returned future cancels it there too.
    pub(crate) async fn run_future<T, F>(
        &self,
        name: &'static str,
        future: F,
    ) -> Result<T, WorkerGone>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let task = AbortOnDrop(self.runtime.spawn(future));
        task.join().await.map_err(|_| WorkerGone(name))
    }
}

/// A task of the worker's runtime, cancelled when its waiter goes away (a
/// refresh interrupted by shutdown must not go on reading 1C).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_lowered_thread_of_its_name() {
        let worker = LowPriority::start("cti-test-low").expect("thread");
        let first = worker
            .run_future("test", async { 1 + 1 })
            .await
            .expect("ran");
        let name = worker
            .run_future("test", async {
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .expect("ran");
        assert_eq!(first, 2);
        assert_eq!(name.as_deref(), Some("cti-test-low"));
        #[cfg(target_os = "linux")]
        {
            let lowered = worker
                .run_future("test", async {
                    crate::thread_priority::current_is_lowest()
                })
                .await
                .expect("ran");
            assert!(lowered, "the worker runs at nice 19 under SCHED_IDLE");
            let mine = crate::thread_priority::current_cores();
            let its = worker
                .run_future("test", async { crate::thread_priority::current_cores() })
                .await
                .expect("ran");
            assert_eq!(its, mine.min(1), "kept on one core when there are several");
        }
    }

    #[tokio::test]
    async fn futures_run_on_the_worker_thread_with_its_own_timers() {
        let worker = LowPriority::start("cti-test-low-f").expect("thread");
        let name = worker
            .run_future("test", async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                std::thread::current().name().map(str::to_owned)
            })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("cti-test-low-f"));
    }

    #[tokio::test]
    async fn dropping_the_waiter_cancels_the_task_on_the_worker() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let worker = LowPriority::start("cti-test-low-c").expect("thread");
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(std::sync::Arc::clone(&dropped));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let waiting = worker.run_future("test", async move {
            let _flag = flag;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        tokio::select! {
            _ = waiting => panic!("a pending future finished"),
            _ = started => {}
        }
        // The select dropped the waiter; the task is cancelled on the worker.
        for _ in 0..200 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the task went on after its waiter was dropped");
    }
}
