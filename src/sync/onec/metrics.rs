//! `cti_onec_writes_total{op,outcome}`: what the 1C writer did, by
//! operation (`create`, `update`, `bank`) and outcome (`created`, `exists`,
//! `updated`, `failed`).

use prometheus::{IntCounterVec, Opts, Registry};

/// The writer's counter, registered once per gateway.
#[derive(Clone)]
pub struct WriteMetrics {
    writes: IntCounterVec,
}

/// The series shown at 0 from the start (so a rate has a beginning).
const SERIES: &[(&str, &str)] = &[
    ("create", "created"),
    ("create", "exists"),
    ("create", "failed"),
    ("update", "updated"),
    ("update", "exists"),
    ("update", "failed"),
    ("bank", "created"),
    ("bank", "failed"),
];

impl WriteMetrics {
    pub fn new(registry: &Registry) -> Result<WriteMetrics, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new(
                "cti_onec_writes_total",
                "What the 1C writer did, by op (create, update, bank) and outcome (created, exists: adopted or unchanged, updated, failed).",
            ),
            &["op", "outcome"],
        )?;
        registry.register(Box::new(writes.clone()))?;
        for (op, outcome) in SERIES {
            writes.with_label_values(&[op, outcome]);
        }
        Ok(WriteMetrics { writes })
    }

    pub fn write(&self, op: &str, outcome: &str) {
        self.writes.with_label_values(&[op, outcome]).inc();
    }
}
