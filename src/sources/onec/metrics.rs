//! The 1C source's own metrics (the per-source state gauges shared by all
//! sources are set from `SourceHealth` when `/metrics` is scraped).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Live lookups take milliseconds to seconds.
const LOOKUP_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct OnecMetrics {
    pub lookup_seconds: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_negative_hits: IntCounter,
    pub lookups_found: IntCounter,
    pub lookups_unknown: IntCounter,
    pub lookups_failed: IntCounter,
    pub lookups_over_budget: IntCounter,
    pub lookups_skipped: IntCounter,
    pub refresh_seconds: Histogram,
    pub refresh_changed: IntGauge,
    pub refresh_unchanged: IntGauge,
}

impl OnecMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<OnecMetrics> {
        let cache = IntCounterVec::new(
            Opts::new(
                "cti_onec_lookup_cache_total",
                "Live-lookup cache results for numbers the directory lacks: hit (1C found it), negative_hit (1C does not know it), miss (asked 1C)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(cache.clone()))?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "cti_onec_lookups_total",
                "Live lookups sent to 1C by how they ended: found, unknown, failed; over_budget counts callers answered before 1C did, skipped those not asked while lookups pause after failures",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        let lookup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cti_onec_lookup_seconds",
                "Time 1C took to answer a live lookup (all its requests), within the budget or not",
            )
            .buckets(LOOKUP_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(lookup_seconds.clone()))?;
        let refresh_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cti_onec_refresh_seconds",
                "Wall time of successful full reads of 1C's counterparties",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )?;
        registry.register(Box::new(refresh_seconds.clone()))?;
        let refresh_changed = IntGauge::new(
            "cti_onec_refresh_changed_records",
            "Counterparties the last full read built anew (new or with a new DataVersion)",
        )?;
        registry.register(Box::new(refresh_changed.clone()))?;
        let refresh_unchanged = IntGauge::new(
            "cti_onec_refresh_unchanged_records",
            "Counterparties the last full read kept as they were (DataVersion unchanged)",
        )?;
        registry.register(Box::new(refresh_unchanged.clone()))?;
        Ok(OnecMetrics {
            lookup_seconds,
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            cache_negative_hits: cache.with_label_values(&["negative_hit"]),
            lookups_found: lookups.with_label_values(&["found"]),
            lookups_unknown: lookups.with_label_values(&["unknown"]),
            lookups_failed: lookups.with_label_values(&["failed"]),
            lookups_over_budget: lookups.with_label_values(&["over_budget"]),
            lookups_skipped: lookups.with_label_values(&["skipped"]),
            refresh_seconds,
            refresh_changed,
            refresh_unchanged,
        })
    }
}
