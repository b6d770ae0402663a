//! The SERVIO source's metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Files take milliseconds (a delta) to seconds (100,000 clients).
const SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone)]
pub struct ServioMetrics {
    /// `outcome`: applied, failed, duplicate.
    pub files: IntCounterVec,
    /// `op`: upsert, remove.
    pub records: IntCounterVec,
    /// `stage`: hash, parse, apply, save.
    pub seconds: HistogramVec,
    pub pending: IntGauge,
    pub last_applied: IntGauge,
}

impl ServioMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ServioMetrics> {
        let files = IntCounterVec::new(
            Opts::new(
                "cti_servio_files_total",
                "SERVIO export files taken, by outcome: applied, failed (moved to error_dir), duplicate (bytes already taken)",
            ),
            &["outcome"],
        )?;
        let records = IntCounterVec::new(
            Opts::new(
                "cti_servio_records_total",
                "SERVIO clients applied to the directory, by op: upsert, remove",
            ),
            &["op"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "cti_servio_file_seconds",
                "Time one SERVIO file took, by stage: hash, parse, apply (directory), save (snapshot and ledger)",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let pending = IntGauge::new(
            "cti_servio_pending_files",
            "Files in servio.import_dir matching the mapping and not yet taken (settling, or waiting for their marker)",
        )?;
        let last_applied = IntGauge::new(
            "cti_servio_last_applied_timestamp_seconds",
            "When a SERVIO file was last applied (unix seconds; 0: none since start): alert when SERVIO stops exporting",
        )?;
        registry.register(Box::new(files.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(last_applied.clone()))?;
        Ok(ServioMetrics {
            files,
            records,
            seconds,
            pending,
            last_applied,
        })
    }
}
