//! A thread for a source's bulk CPU work (parsing a full read, building
//! its part of the directory) at the lowest scheduling priority.
//!
//! A refresh is never urgent, a ringing phone always is: on a small machine
//! a full read parsed on the runtime's worker threads competes with SayName
//! for the same cores and triples its tail latency. Work sent here runs on
//! its own thread with `nice 19` (Linux: per thread; threads it spawns, such
//! as the directory's parallel build, inherit it), so the scheduler gives
//! the cores to answers first and the refresh takes what is left. The thread
//! also runs under `SCHED_IDLE`, so a woken call never waits for its slice.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct LowPriority {
    jobs: mpsc::Sender<Job>,
}

/// The worker thread is gone (it panicked in a job, or could not start).
#[derive(Debug, thiserror::Error)]
#[error("the low-priority worker thread of {0} stopped")]
pub(crate) struct WorkerGone(pub &'static str);

impl LowPriority {
    /// Starts the worker thread `name`; it ends when this handle is dropped.
    pub(crate) fn start(name: &'static str) -> std::io::Result<LowPriority> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_own_priority(name);
                for job in queue {
                    job();
                }
            })?;
        Ok(LowPriority { jobs })
    }

    /// Runs `work` on the worker thread and waits for its result.
    pub(crate) async fn run<T, F>(&self, name: &'static str, work: F) -> Result<T, WorkerGone>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        self.jobs.send(job).map_err(|_| WorkerGone(name))?;
        rx.await.map_err(|_| WorkerGone(name))
    }
}

#[cfg(target_os = "linux")]
fn lower_own_priority(name: &str) {
    // SAFETY: setpriority only reads its integer arguments; on Linux,
    // PRIO_PROCESS with the thread id (gettid) applies to this thread alone.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if result != 0 {
        tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not lower the thread's priority");
    }
    // SCHED_IDLE on top: a nice-19 thread may still finish its time slice
    // (milliseconds) before a woken runtime worker gets the core; any normal
    // thread that wakes preempts a SCHED_IDLE one at once.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not set SCHED_IDLE");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_a_lowered_thread() {
        let worker = LowPriority::start("cti-test-low").expect("thread");
        let first = worker.run("test", || 1 + 1).await.expect("ran");
        let name = worker
            .run("test", || std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert_eq!(first, 2);
        assert_eq!(name.as_deref(), Some("cti-test-low"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpriority reads its integer arguments only.
            let nice = worker
                .run("test", || unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::getpriority(libc::PRIO_PROCESS, tid)
                })
                .await
                .expect("ran");
            assert_eq!(nice, 19);
            // SAFETY: pid 0 is the calling thread.
            let policy = worker
                .run("test", || unsafe { libc::sched_getscheduler(0) })
                .await
                .expect("ran");
            assert_eq!(policy, libc::SCHED_IDLE);
        }
    }
}
