//! The SOAP answers' counts and latencies, kept per thread.
//!
//! Every SayName adds to a request counter, a latency bucket, the latency
//! sum and the count of 200s. With one atomic per series, as the
//! `prometheus` crate keeps them, both cores write the same cache lines on
//! every request, and each add waits for the line to come over from the
//! other core (`perf`: the histogram's adds alone were about 1% of the
//! gateway's samples under wrk, and each such stall grows with the cores).
//! Here each thread adds to a stripe of its own, on lines no other core
//! writes, and a scrape sums the stripes.
//!
//! A scrape reads the stripes while requests go on, so it may see a
//! request's bucket without its share of the sum; the histogram's count is
//! the sum of its buckets, so the two always agree, and every count only
//! grows, as Prometheus expects.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::IntCounterVec;

use super::{OperationLabel, Outcome, LATENCY_BUCKETS};

/// Stripes: more than the cores of any machine the gateway runs on is not
/// needed (threads past it share, which is only slower); tokio's workers
/// take the first ones.
const STRIPES: usize = 16;
const OPERATIONS: usize = OperationLabel::ALL.len();
const OUTCOMES: usize = Outcome::ALL.len();
/// The latency buckets and the last one, `+Inf`.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// One thread's counts, on cache lines of its own (128 bytes: two lines,
/// as the adjacent-line prefetcher pulls pairs).
#[repr(align(128))]
struct Stripe {
    /// By `operation * OUTCOMES + outcome`.
    requests: [AtomicU64; OPERATIONS * OUTCOMES],
    buckets: [[AtomicU64; BUCKETS]; OPERATIONS],
    sum_nanos: [AtomicU64; OPERATIONS],
    /// `cti_http_responses_total{endpoint="soap",status="200"}` not yet
    /// moved to its counter (see [`HttpResponses`]).
    soap_ok: AtomicU64,
}

impl Stripe {
    fn new() -> Stripe {
        let zero = |_| AtomicU64::new(0);
        Stripe {
            requests: std::array::from_fn(zero),
            buckets: std::array::from_fn(|_| std::array::from_fn(zero)),
            sum_nanos: std::array::from_fn(zero),
            soap_ok: AtomicU64::new(0),
        }
    }
}

/// The calling thread's stripe: threads take them in turn as they first count.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|index| *index)
}

/// The counts of SOAP answers, striped by thread.
pub(super) struct SoapCounts {
    stripes: Box<[Stripe]>,
}

impl SoapCounts {
    pub(super) fn new() -> Arc<SoapCounts> {
        Arc::new(SoapCounts {
            stripes: (0..STRIPES).map(|_| Stripe::new()).collect(),
        })
    }

    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    /// Counts one answered request of `op` that ended with `outcome` and
    /// took `elapsed`.
    #[inline]
    pub(super) fn observe(&self, op: OperationLabel, outcome: Outcome, elapsed: Duration) {
        let stripe = self.stripe();
        let op = op as usize;
        stripe.requests[op * OUTCOMES + outcome as usize].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(BUCKETS - 1);
        stripe.buckets[op][bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        stripe.sum_nanos[op].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts one `200` on the SOAP endpoint.
    #[inline]
    pub(super) fn soap_ok(&self) {
        self.stripe().soap_ok.fetch_add(1, Ordering::Relaxed);
    }

    fn requests(&self, op: usize, outcome: usize) -> u64 {
        self.sum(|s| &s.requests[op * OUTCOMES + outcome])
    }

    fn sum(&self, field: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// The SOAP 200s counted since the last call, taken out of the stripes.
    fn take_soap_ok(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.soap_ok.swap(0, Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

/// `cti_soap_requests_total` and `cti_soap_request_duration_seconds`, read
/// from [`SoapCounts`] at each scrape.
pub(super) struct SoapCollector {
    counts: Arc<SoapCounts>,
    requests: Desc,
    durations: Desc,
}

const REQUESTS_NAME: &str = "cti_soap_requests_total";
const REQUESTS_HELP: &str = "SOAP requests answered, by operation and outcome.";
const DURATIONS_NAME: &str = "cti_soap_request_duration_seconds";
const DURATIONS_HELP: &str = "Time from a SOAP request's full body to its answer, by operation.";

impl SoapCollector {
    pub(super) fn new(counts: Arc<SoapCounts>) -> prometheus::Result<SoapCollector> {
        let labels = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Ok(SoapCollector {
            counts,
            requests: Desc::new(
                REQUESTS_NAME.into(),
                REQUESTS_HELP.into(),
                labels(&["operation", "outcome"]),
                Default::default(),
            )?,
            durations: Desc::new(
                DURATIONS_NAME.into(),
                DURATIONS_HELP.into(),
                labels(&["operation"]),
                Default::default(),
            )?,
        })
    }

    fn requests_family(&self) -> MetricFamily {
        let mut metrics = Vec::new();
        for op in OperationLabel::ALL {
            // Only the pairs that can happen (a SayName is never `ok`), each
            // from the start, at 0 until counted.
            for &outcome in op.outcomes() {
                let mut counter = proto::Counter::default();
                counter.set_value(self.counts.requests(op as usize, outcome as usize) as f64);
                let mut metric = proto::Metric::default();
                metric.set_label(vec![
                    label("operation", op.label()),
                    label("outcome", outcome.label()),
                ]);
                metric.set_counter(counter);
                metrics.push(metric);
            }
        }
        family(REQUESTS_NAME, REQUESTS_HELP, MetricType::COUNTER, metrics)
    }

    fn durations_family(&self) -> MetricFamily {
        let mut metrics = Vec::new();
        for op in OperationLabel::ALL {
            let op_index = op as usize;
            let per_bucket: Vec<u64> = (0..BUCKETS)
                .map(|b| self.counts.sum(|s| &s.buckets[op_index][b]))
                .collect();
            let mut cumulative = 0u64;
            let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
            for (&upper, &count) in LATENCY_BUCKETS.iter().zip(&per_bucket) {
                cumulative = cumulative.wrapping_add(count);
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(upper);
                bucket.set_cumulative_count(cumulative);
                buckets.push(bucket);
            }
            let total = cumulative.wrapping_add(per_bucket[BUCKETS - 1]);
            let mut histogram = proto::Histogram::default();
            histogram.set_sample_count(total);
            histogram.set_sample_sum(self.counts.sum(|s| &s.sum_nanos[op_index]) as f64 / 1e9);
            histogram.set_bucket(buckets);
            let mut metric = proto::Metric::default();
            metric.set_label(vec![label("operation", op.label())]);
            metric.set_histogram(histogram);
            metrics.push(metric);
        }
        family(
            DURATIONS_NAME,
            DURATIONS_HELP,
            MetricType::HISTOGRAM,
            metrics,
        )
    }
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

impl Collector for SoapCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.requests, &self.durations]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.requests_family(), self.durations_family()]
    }
}

/// `cti_http_responses_total`: the counter vector every endpoint counts
/// in, plus the SOAP 200s counted in the stripes, moved into it at each
/// scrape (so the family stays one, with one set of labels).
pub(super) struct HttpResponses {
    vec: IntCounterVec,
    soap_ok: prometheus::IntCounter,
    counts: Arc<SoapCounts>,
}

impl HttpResponses {
    pub(super) fn new(vec: IntCounterVec, counts: Arc<SoapCounts>) -> HttpResponses {
        let soap_ok = vec.with_label_values(&["soap", "200"]);
        HttpResponses {
            vec,
            soap_ok,
            counts,
        }
    }
}

impl Collector for HttpResponses {
    fn desc(&self) -> Vec<&Desc> {
        self.vec.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let moved = self.counts.take_soap_ok();
        if moved > 0 {
            self.soap_ok.inc_by(moved);
        }
        self.vec.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_and_the_histogram_count_is_its_buckets() {
        let counts = SoapCounts::new();
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|i| {
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counts.observe(
                            OperationLabel::SayName,
                            Outcome::Known,
                            Duration::from_micros(10 + i as u64),
                        );
                        counts.soap_ok();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a counting thread panicked");
        }
        let n = (STRIPES as u64 + 3) * 1000;
        assert_eq!(
            counts.requests(OperationLabel::SayName as usize, Outcome::Known as usize),
            n
        );
        let collector = SoapCollector::new(Arc::clone(&counts)).expect("valid descs");
        let durations = collector.durations_family();
        let say_name = &durations.get_metric()[0];
        let histogram = say_name.get_histogram();
        assert_eq!(histogram.get_sample_count(), n);
        // Every observation is 10-28 µs: all in the 25 µs bucket or the 50 µs one.
        let buckets = histogram.get_bucket();
        assert_eq!(buckets[0].upper_bound(), 0.000_025);
        assert_eq!(buckets[1].cumulative_count(), n);
        let expected_sum: f64 = (0..STRIPES as u64 + 3)
            .map(|i| (10 + i) as f64 * 1e-3)
            .sum();
        assert!((histogram.get_sample_sum() - expected_sum).abs() < 1e-9);
        assert_eq!(counts.take_soap_ok(), n);
        assert_eq!(counts.take_soap_ok(), 0, "taken once");
    }

    #[test]
    fn a_latency_past_the_last_bucket_counts_only_in_inf() {
        let counts = SoapCounts::new();
        counts.observe(
            OperationLabel::IncomingCall,
            Outcome::Ok,
            Duration::from_secs(10),
        );
        let collector = SoapCollector::new(Arc::clone(&counts)).expect("valid descs");
        let family = collector.durations_family();
        let incoming = &family.get_metric()[OperationLabel::IncomingCall as usize];
        let histogram = incoming.get_histogram();
        assert_eq!(histogram.get_sample_count(), 1);
        assert!(histogram
            .get_bucket()
            .iter()
            .all(|b| b.cumulative_count() == 0));
        assert_eq!(histogram.get_sample_sum(), 10.0);
    }
}
