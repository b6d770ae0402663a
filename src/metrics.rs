//! The one Prometheus registry, and the metrics of the request path.
//!
//! Each module registers its own metrics in this registry (the store, the
//! pop-up hub); the ones here belong to the HTTP front and the SOAP answers.
//! Label values used on the hot path are resolved once, at start-up, so a
//! request increments a plain atomic counter; the SOAP answers' counts,
//! which every SayName adds to on every core, are kept per thread
//! ([`striped`]) and summed when scraped.

#[cfg(target_os = "linux")]
mod process;
mod striped;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 25 µs: a SayName answer takes microseconds, and the
/// interesting tail is where something waited (disk, 1C, a slow client).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// How one SOAP request ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SayName for a number the directory knows.
    Known,
    /// SayName for a number it does not know (answered with empty data).
    Unknown,
    /// SayName before any directory was loaded (answered with empty data).
    NotReady,
    /// IncomingCall delivered, journaled and answered.
    Ok,
    /// Answered with a fault because the request was wrong.
    ClientError,
    /// Answered with a fault because the gateway failed (e.g. the journal).
    ServerError,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Known,
        Outcome::Unknown,
        Outcome::NotReady,
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::ServerError,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Known => "known",
            Outcome::Unknown => "unknown",
            Outcome::NotReady => "not_ready",
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
        }
    }
}

/// The SOAP operation a request asked for, as the `operation` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationLabel {
    SayName,
    IncomingCall,
    /// A request that could not be read far enough to know.
    Invalid,
}

impl OperationLabel {
    const ALL: [OperationLabel; 3] = [
        OperationLabel::SayName,
        OperationLabel::IncomingCall,
        OperationLabel::Invalid,
    ];

    /// The outcomes a request of this operation can end with: only these
    /// pairs are exported (a SayName is never `ok`, an unreadable request
    /// never `known`), so no series sits at 0 for ever.
    fn outcomes(self) -> &'static [Outcome] {
        match self {
            OperationLabel::SayName => &[Outcome::Known, Outcome::Unknown, Outcome::NotReady],
            OperationLabel::IncomingCall => &[Outcome::Ok, Outcome::ServerError],
            OperationLabel::Invalid => &[Outcome::ClientError],
        }
    }

    fn label(self) -> &'static str {
        match self {
            OperationLabel::SayName => "SayName",
            OperationLabel::IncomingCall => "IncomingCall",
            OperationLabel::Invalid => "invalid",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// `cti_soap_requests_total`, `cti_soap_request_duration_seconds` and
    /// the SOAP 200s: counted per thread, summed at each scrape.
    soap: Arc<striped::SoapCounts>,
    pub http_connections: IntGauge,
    pub http_connections_refused: IntCounter,
    pub http_responses: IntCounterVec,
    pub http_refused: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    /// What `/readyz` answers, as a number: set at each scrape.
    pub ready: IntGauge,
    pub directory_counterparties: IntGauge,
    pub directory_phones: IntGauge,
    pub directory_ambiguous_phones: IntGauge,
    pub directory_reloads: IntCounterVec,
    /// Handed to the directory, which counts as it loads.
    pub directory_unusable_phones: IntCounterVec,
    /// Handed to the directory, which counts as records enter.
    pub directory_invalid_requisites: IntCounterVec,
    /// Handed to the directory, which sets it as CRM overlays are set.
    pub sync_unmapped_managers: IntGaugeVec,
    pub incoming_calls_unknown_key: IntCounter,
    pub incoming_calls_undelivered: IntCounter,
    /// Per source (`file`, `onec`, `push`...), set when `/metrics` is scraped.
    pub source_records: IntGaugeVec,
    pub source_last_success: GaugeVec,
    pub source_consecutive_failures: IntGaugeVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Registration fails only for a malformed or duplicate metric name: a bug
    // in this file, caught by the first test that builds the registry.
    result.unwrap_or_else(|e| panic!("metric definition is invalid: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));

        let soap = striped::SoapCounts::new();
        reg(Box::new(must(striped::SoapCollector::new(Arc::clone(
            &soap,
        )))));

        let http_connections = must(IntGauge::new(
            "cti_http_connections",
            "Connections open now, operator screens' WebSockets included (they hold server.max_connections slots too; cti_popup_subscribers counts them alone).",
        ));
        let http_connections_refused = must(IntCounter::new(
            "cti_http_connections_refused_total",
            "Connections closed at accept because server.max_connections were open (for an address outside soap.allow_from and server.trusted_proxies: all but the server.reserved_connections).",
        ));
        let http_responses = must(IntCounterVec::new(
            Opts::new(
                "cti_http_responses_total",
                "HTTP responses by endpoint and status code.",
            ),
            &["endpoint", "status"],
        ));
        let http_refused = must(IntCounterVec::new(
            Opts::new(
                "cti_http_refused_total",
                "Requests refused before their credentials were looked at, by endpoint and reason (address: not in the endpoint group's allow_from; auth_throttled: too many failed credential checks from the address; origin: an operator screen opened by a page of an origin not in popup.allowed_origins); and connections, endpoint=\"connection\", closed before any request (per_address: server.max_connections_per_address open from the address; reserved: only the slots reserved for soap.allow_from were free; max_connections: every slot taken; first_request_timeout: no whole request head, TLS handshake included, within server.first_request_timeout).",
            ),
            &["endpoint", "reason"],
        ));
        let tls_handshake_failures = must(IntCounter::new(
            "cti_tls_handshake_failures_total",
            "TLS connections closed before their handshake ended: failed, not TLS (plain HTTP on the TLS port), or not finished within server.first_request_timeout.",
        ));
        let ready = must(IntGauge::new(
            "cti_ready",
            "1 when /readyz answers 200 (a directory is loaded, from a source or the snapshot), 0 while it answers 503.",
        ));
        let directory_counterparties = must(IntGauge::new(
            "cti_directory_counterparties",
            "Counterparties in the directory.",
        ));
        let directory_phones = must(IntGauge::new(
            "cti_directory_phones",
            "Distinct normalized phone numbers in the directory.",
        ));
        let directory_ambiguous_phones = must(IntGauge::new(
            "cti_directory_ambiguous_phones",
            "Phones listed by more than one counterparty (answered by the documented rule).",
        ));
        let directory_reloads = must(IntCounterVec::new(
            Opts::new(
                "cti_directory_reloads_total",
                "Directory loads by source and outcome.",
            ),
            &["source", "outcome"],
        ));
        let directory_unusable_phones = must(IntCounterVec::new(
            Opts::new(
                "cti_directory_unusable_phones_total",
                "Phone strings dropped from records as they were loaded, by source: no usable number (too short for a national number, too long for an extension, or no number at all). The record is kept.",
            ),
            &["source"],
        ));
        let directory_invalid_requisites = must(IntCounterVec::new(
            Opts::new(
                "cti_directory_invalid_requisites_total",
                "Records that entered the directory with a requisite failing its check (INN, KPP, OGRN, OGRNIP: length, form, check digits), by source and field; each content counted once. The record is kept and answers; the push API also warns in its answer.",
            ),
            &["source", "field"],
        ));
        let sync_unmapped_managers = must(IntGaugeVec::new(
            Opts::new(
                "cti_sync_unmapped_managers",
                "CRM users named as a record's responsible manager that no [[manager]] maps to an extension, by system: those records' calls go to the next manager by [sync] manager_precedence. Each user is logged once.",
            ),
            &["system"],
        ));
        let incoming_calls_unknown_key = must(IntCounter::new(
            "cti_incoming_calls_unknown_key_total",
            "IncomingCall requests whose Key no [[operator]] has (answered 1 and journaled; logged at warn, at most once a minute per key). The one counter of these calls.",
        ));
        let incoming_calls_undelivered = must(IntCounter::new(
            "cti_incoming_calls_undelivered_total",
            "IncomingCall requests for an operator's key that reached no WebSocket screen when published (a long-poll screen may still fetch the card while it is in the replay buffer). Calls for unknown keys are in cti_incoming_calls_unknown_key_total only.",
        ));
        let build_info = must(IntGaugeVec::new(
            Opts::new(
                "cti_build_info",
                "Always 1: the gateway's version and the git commit it was built from (\"unknown\" when built outside a git checkout).",
            ),
            &["version", "commit"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CTI_GIT_COMMIT")])
            .set(1);
        let source_records = must(IntGaugeVec::new(
            Opts::new(
                "cti_source_records",
                "Counterparties each source holds in the directory.",
            ),
            &["source"],
        ));
        let source_last_success = must(GaugeVec::new(
            Opts::new(
                "cti_source_last_success_timestamp_seconds",
                "When each source last loaded or read successfully (unix time; 0 if never since start).",
            ),
            &["source"],
        ));
        let source_consecutive_failures = must(IntGaugeVec::new(
            Opts::new(
                "cti_source_consecutive_failures",
                "Failed loads or reads of each source since its last success.",
            ),
            &["source"],
        ));
        for c in [
            Box::new(source_records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(source_last_success.clone()),
            Box::new(source_consecutive_failures.clone()),
            Box::new(http_connections.clone()),
            Box::new(http_connections_refused.clone()),
            Box::new(striped::HttpResponses::new(
                http_responses.clone(),
                Arc::clone(&soap),
            )),
            Box::new(http_refused.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(ready.clone()),
            Box::new(directory_counterparties.clone()),
            Box::new(directory_phones.clone()),
            Box::new(directory_ambiguous_phones.clone()),
            Box::new(directory_reloads.clone()),
            Box::new(directory_unusable_phones.clone()),
            Box::new(directory_invalid_requisites.clone()),
            Box::new(sync_unmapped_managers.clone()),
            Box::new(incoming_calls_unknown_key.clone()),
            Box::new(incoming_calls_undelivered.clone()),
            Box::new(build_info),
        ] {
            reg(c);
        }
        // Resident memory, CPU time, open files: Linux only, from /proc.
        #[cfg(target_os = "linux")]
        reg(Box::new(process::ProcessMetrics::for_self()));

        Metrics {
            registry,
            soap,
            http_connections,
            http_connections_refused,
            http_responses,
            http_refused,
            tls_handshake_failures,
            ready,
            directory_counterparties,
            directory_phones,
            directory_ambiguous_phones,
            source_records,
            source_last_success,
            source_consecutive_failures,
            directory_reloads,
            directory_unusable_phones,
            directory_invalid_requisites,
            sync_unmapped_managers,
            incoming_calls_unknown_key,
            incoming_calls_undelivered,
        }
    }

    /// `cti_tls_certificate_expiry_timestamp_seconds`, registered only when
    /// the listener speaks TLS (a 0 would set off every expiry alert).
    pub fn tls_certificate_expiry(&self) -> prometheus::Result<prometheus::Gauge> {
        let gauge = prometheus::Gauge::new(
            "cti_tls_certificate_expiry_timestamp_seconds",
            "When the listener's TLS certificate expires (unix time; 0 if its notAfter could not be read).",
        )?;
        self.registry.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one answered SOAP request and its duration.
    #[inline]
    pub fn observe_soap(&self, op: OperationLabel, outcome: Outcome, elapsed: Duration) {
        self.soap.observe(op, outcome, elapsed);
    }

    /// Counts one `200` on the SOAP endpoint in
    /// `cti_http_responses_total{endpoint="soap",status="200"}` (the PBX's
    /// answered requests: on every core, so counted per thread).
    #[inline]
    pub fn soap_ok_response(&self) {
        self.soap.soap_ok();
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soap_counters_land_on_their_labels() {
        let m = Metrics::new();
        m.observe_soap(
            OperationLabel::IncomingCall,
            Outcome::ServerError,
            Duration::from_millis(1),
        );
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(
            text.contains(
                r#"cti_soap_requests_total{operation="IncomingCall",outcome="server_error"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"cti_soap_requests_total{operation="SayName",outcome="known"} 0"#));
    }

    #[test]
    fn impossible_label_pairs_are_not_exported() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        for pair in [
            r#"operation="SayName",outcome="ok""#,
            r#"operation="SayName",outcome="client_error""#,
            r#"operation="IncomingCall",outcome="known""#,
            r#"operation="invalid",outcome="known""#,
            r#"operation="invalid",outcome="server_error""#,
        ] {
            assert!(!text.contains(pair), "{pair} in:\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("cti_soap_requests_total{"))
            .count();
        assert_eq!(series, 6, "{text}");
    }

    #[test]
    fn build_info_names_version_and_commit() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.starts_with("cti_build_info{"))
            .unwrap_or_else(|| panic!("no cti_build_info in:\n{text}"));
        assert!(
            line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
        assert!(line.contains("commit=\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
