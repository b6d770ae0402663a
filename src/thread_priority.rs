//! The lowest scheduling priority for threads whose work is never urgent
//! (a source's full read, the 1C snapshot's writes), so that they take only
//! the CPU that answers to the PBX leave.
//!
//! Linux: `nice 19` for the thread alone (threads it spawns inherit all of
//! this), and `SCHED_IDLE` on top. A nice-19 thread may still finish its
//! time slice (milliseconds) before a woken runtime worker gets the core;
//! any normal thread that wakes preempts a `SCHED_IDLE` one at once. There
//! is no way back without privileges: only threads that stay low for life
//! call this. Elsewhere the priority is left as it is.
//!
//! Such threads are also kept on one core, the last the process may use
//! (when it may use more than one). Preempting a busy core costs the woken
//! thread more than waking an idle one (an interrupt to that core; on a
//! virtual machine an exit to the hypervisor), so background work spread
//! over every core makes every answer pay that; kept on one, it leaves the
//! other cores idle between answers. Measured on the 2-core VM with a
//! 100,000-record refresh running back to back: SayName p99 3.5-4.0 ms
//! spread, 2.9-3.3 ms kept on one core (1.3-1.6 ms with no refresh).

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
    keep_on_last_core(name);
}

/// Restricts the calling thread to the last core it may run on, if it may
/// run on more than one.
#[cfg(target_os = "linux")]
fn keep_on_last_core(name: &str) {
    // SAFETY: cpu_set_t is plain data (all zero is the empty set); the
    // calls get its true size; pid 0 is the calling thread; CPU_ISSET and
    // CPU_SET are given indexes below CPU_SETSIZE.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &allowed))
            .collect();
        let [_, .., last] = cpus[..] else {
            return; // one core or none known: nothing to leave free
        };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not keep the thread on one core");
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_current(_name: &str) {}

/// Asks the scheduler for a short time slice for the calling thread (true
/// when the kernel took the request), at
/// its present priority: a thread that wakes for a moment of work (the
/// store's writer, between a request and its disk) then preempts a busy
/// core at once instead of waiting for the running thread's slice to end
/// (about 3 ms on two cores). Linux 6.12 and later take this from any
/// thread (`sched_setattr`'s `sched_runtime` for `SCHED_OTHER`); older
/// kernels refuse or ignore it, logged at debug: the thread then waits as
/// before.
#[cfg(target_os = "linux")]
pub(crate) fn short_slice_current(name: &str, slice: std::time::Duration) -> bool {
    /// `struct sched_attr` as the kernel's first version of it (48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    // SAFETY: getpriority reads its integer arguments; errno is cleared
    // first because -1 is also a valid nice value.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() != 0 {
            return false;
        }
        nice
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: pid 0 is the calling thread; `attr` is a valid, fully
    // initialized sched_attr whose `size` says how much of it to read.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result != 0 {
        tracing::debug!(thread = name, error = %std::io::Error::last_os_error(), "could not ask for a short time slice");
        return false;
    }
    true
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn short_slice_current(_name: &str, _slice: std::time::Duration) -> bool {
    false
}

/// The scheduling of a thread whose every wake is urgent and brief (the
/// call journal's writer: a request's rows, a commit's CPU part of tens of
/// microseconds, then the disk), which also has long work to do now and then
/// (a source's snapshot, retention) that must not hold a core.
///
/// While urgent it runs under `SCHED_FIFO` at the lowest real-time priority,
/// where the kernel allows it: a wake then preempts whatever a busy core runs
/// at once. A short time slice ([`short_slice_current`]) does not do as
/// much: measured with a pop-up fanned out to 1,000 screens while its call is
/// journaled (`bench/popup.sh one`, three rounds each), the PBX's
/// `IncomingCall` p99 was 5.5-6.0 ms with the slice alone against 1.6-3.0 ms
/// real-time (2.3-2.6 ms with no screen connected). For long work the thread
/// is [`Urgency::relaxed`]: back under `SCHED_OTHER` with the short slice.
///
/// Real-time needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least 1
/// (systemd: `LimitRTPRIO=1`). Without it the thread keeps the short slice
/// and [`Urgency::granted`] says so. `SCHED_RESET_ON_FORK` keeps threads it
/// might spawn out of real-time.
#[derive(Debug)]
pub(crate) struct Urgency {
    name: &'static str,
    slice: std::time::Duration,
    granted: bool,
    urgent: bool,
}

impl Urgency {
    /// Makes the calling thread urgent if it may, else gives it the short
    /// slice.
    pub(crate) fn start(name: &'static str, slice: std::time::Duration) -> Urgency {
        let mut urgency = Urgency {
            name,
            slice,
            granted: false,
            urgent: false,
        };
        urgency.granted = urgency.set_realtime();
        urgency.urgent = urgency.granted;
        if !urgency.granted {
            let _ = short_slice_current(name, slice);
        }
        urgency
    }

    /// Whether the kernel allowed real-time scheduling.
    pub(crate) fn granted(&self) -> bool {
        self.granted
    }

    /// Back to real-time after [`Urgency::relaxed`] (nothing when it was
    /// not granted).
    pub(crate) fn urgent(&mut self) {
        if self.granted && !self.urgent {
            self.urgent = self.set_realtime();
        }
    }

    /// Normal scheduling with the short slice, for work that may take
    /// milliseconds.
    pub(crate) fn relaxed(&mut self) {
        if self.urgent {
            self.urgent = !short_slice_current(self.name, self.slice) && !set_other();
        }
    }

    #[cfg(target_os = "linux")]
    fn set_realtime(&self) -> bool {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
        let result = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
        };
        if result != 0 {
            tracing::debug!(thread = self.name, error = %std::io::Error::last_os_error(), "could not set SCHED_FIFO");
            return false;
        }
        true
    }

    #[cfg(not(target_os = "linux"))]
    fn set_realtime(&self) -> bool {
        false
    }
}

/// `SCHED_OTHER` at the thread's nice value, when the short slice was
/// refused (older kernels).
#[cfg(target_os = "linux")]
fn set_other() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in Urgency::set_realtime.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_other() -> bool {
    true
}

/// The cores the calling thread may run on (tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn current_cores() -> usize {
    // SAFETY: as in keep_on_last_core.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return 0;
        }
        libc::CPU_COUNT(&allowed) as usize
    }
}

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
/// Whether the thread named `name` of this process runs under
/// `SCHED_IDLE`, read from `/proc` (tests of threads they cannot enter).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn thread_is_idle_scheduled(name: &str) -> Option<bool> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let tid: libc::pid_t = task.file_name().to_str()?.parse().ok()?;
        // SAFETY: sched_getscheduler reads its integer argument only.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        return Some(policy == libc::SCHED_IDLE);
    }
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's slice as the kernel reports it, if it does.
    fn reported_slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[test]
    fn a_thread_that_asks_for_a_short_slice_gets_it_where_the_kernel_grants_it() {
        let (granted, slice) = std::thread::spawn(|| {
            let granted = short_slice_current("test", std::time::Duration::from_micros(100));
            (granted, reported_slice_ns())
        })
        .join()
        .expect("thread");
        // Kernels before 6.12 may refuse or not report it: nothing to check.
        if let (true, Some(slice)) = (granted, slice) {
            assert_eq!(slice, 100_000);
        }
    }

    #[test]
    fn an_urgent_thread_is_real_time_where_granted_and_normal_while_relaxed() {
        std::thread::spawn(|| {
            let policy = || {
                // SAFETY: pid 0 is the calling thread.
                let policy = unsafe { libc::sched_getscheduler(0) };
                policy & !libc::SCHED_RESET_ON_FORK
            };
            let mut urgency = Urgency::start("test", std::time::Duration::from_micros(100));
            if !urgency.granted() {
                // Not root, no CAP_SYS_NICE, no RLIMIT_RTPRIO: nothing to check
                // but that the thread still runs normally.
                assert_eq!(policy(), libc::SCHED_OTHER);
                return;
            }
            assert_eq!(policy(), libc::SCHED_FIFO);
            urgency.relaxed();
            assert_eq!(policy(), libc::SCHED_OTHER);
            urgency.relaxed();
            assert_eq!(policy(), libc::SCHED_OTHER);
            urgency.urgent();
            assert_eq!(policy(), libc::SCHED_FIFO);
        })
        .join()
        .expect("thread");
    }
}
