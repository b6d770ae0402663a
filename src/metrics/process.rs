//! The `process_*` metrics, with CPU time in fractions of a second.
//!
//! prometheus's process collector reads CPU time from `/proc/self/stat` in
//! clock ticks and divides them into whole seconds, so
//! `process_cpu_seconds_total` moved only once a second of CPU had been
//! spent: a `rate()` over a minute of a gateway using 1% of a core read 0
//! most of the time, then jumped. This wraps it and puts
//! `getrusage(RUSAGE_SELF)`'s user + system time (microseconds) in that
//! series instead; the other series (memory, open files, threads, start
//! time) are the collector's own.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{Counter, MetricFamily};

const CPU_SECONDS: &str = "process_cpu_seconds_total";

pub(super) struct ProcessMetrics {
    inner: ProcessCollector,
}

impl ProcessMetrics {
    pub(super) fn for_self() -> ProcessMetrics {
        ProcessMetrics {
            inner: ProcessCollector::for_self(),
        }
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        if let Some(seconds) = cpu_seconds() {
            for family in families.iter_mut().filter(|f| f.name() == CPU_SECONDS) {
                for metric in family.mut_metric() {
                    let mut counter = Counter::default();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

/// User and system CPU time of the whole process so far, in seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes the struct it is given; a zeroed
    // `rusage` is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live `rusage`, RUSAGE_SELF a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_has_fractions_of_a_second() {
        // Burn a little CPU: well under a second, so a whole-second reading is 0.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let families = ProcessMetrics::for_self().collect();
        let cpu = families
            .iter()
            .find(|f| f.name() == CPU_SECONDS)
            .expect("process_cpu_seconds_total collected");
        let value = cpu.get_metric()[0].get_counter().get_value();
        assert!(value > 0.0, "{value}");
        assert!(value.fract() != 0.0, "whole seconds: {value}");
    }
}
