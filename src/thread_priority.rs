//! The lowest scheduling priority for threads whose work is never urgent
//! (a source's full read, the 1C snapshot's writes), so that they take only
//! the CPU that answers to the PBX leave.
//!
//! Linux: `nice 19` for the thread alone (threads it spawns inherit it),
//! and `SCHED_IDLE` on top. A nice-19 thread may still finish its time slice
//! (milliseconds) before a woken runtime worker gets the core; any normal
//! thread that wakes preempts a `SCHED_IDLE` one at once. There is no way
//! back without privileges: only threads that stay low for life call this.
//! Elsewhere the priority is left as it is.

/// Lowers the calling thread for the rest of its life. A refusal (some
/// container runtimes forbid `SCHED_IDLE`) is logged at debug and ignored:
/// the thread then runs at normal priority, slower answers but no harm.
#[cfg(target_os = "linux")]
pub(crate) fn lower_current(name: &str) {
    // SAFETY: setpriority only reads its integer arguments; on Linux,
    // PRIO_PROCESS with the thread id (gettid) applies to this thread alone.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if result != 0 {
        tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not lower the thread's priority");
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not set SCHED_IDLE");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_current(_name: &str) {}

/// True when the calling thread runs at nice 19 under `SCHED_IDLE` (tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn current_is_lowest() -> bool {
    // SAFETY: getpriority and sched_getscheduler read integer arguments
    // only; gettid and pid 0 name the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::getpriority(libc::PRIO_PROCESS, tid) == 19
            && libc::sched_getscheduler(0) == libc::SCHED_IDLE
    }
}
