//! What the gateway keeps per sending system, built once at start for each
//! system registered with a [`System`]: its `[sync.<system>]` settings, its
//! [`Limiter`] and its [`SyncHealth`]. The system's worker takes the limiter
//! and the health from here; `/readyz`, `/metrics` and the status API read
//! them.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::config::{SyncConfig, SyncSystemConfig};
use crate::sync::health::SyncHealth;
use crate::sync::limiter::{LimitSpec, Limiter};
use crate::sync::system::{PublishedLimit, System};

/// One sending system's runtime parts.
#[derive(Debug)]
pub struct SystemParts {
    pub name: String,
    /// Its `[sync.<system>]` table (defaults where it has none).
    pub config: SyncSystemConfig,
    pub limiter: Arc<Limiter>,
    pub health: Arc<SyncHealth>,
}

/// The sending systems' parts, by name.
#[derive(Debug)]
pub struct SyncRuntimeParts {
    systems: BTreeMap<String, Arc<SystemParts>>,
    /// `cti_sync_state{system,state}`, which each system's health sets.
    state_gauge: IntGaugeVec,
}

impl SyncRuntimeParts {
    /// No system yet; `cti_sync_state` registered on `registry`.
    pub fn new(registry: &Registry) -> Result<SyncRuntimeParts, prometheus::Error> {
        let state_gauge = IntGaugeVec::new(
            Opts::new(
                "cti_sync_state",
                "A sync system's state: 1 for the current one (ok, failing, limited, blocked), 0 for the others. failing: its requests fail and are retried with backoff; limited: it answered that its rate limit was hit; blocked: it refuses all work until unblocked (probes only).",
            ),
            &["system", "state"],
        )?;
        registry.register(Box::new(state_gauge.clone()))?;
        Ok(SyncRuntimeParts {
            systems: BTreeMap::new(),
            state_gauge,
        })
    }

    /// The parts of each of `systems`, each with its `[sync.<system>]` table
    /// from `config` (the defaults without one), `cti_sync_state` on
    /// `registry`.
    pub fn build(
        registry: &Registry,
        systems: &[Arc<dyn System>],
        config: &SyncConfig,
    ) -> Result<SyncRuntimeParts, prometheus::Error> {
        let mut parts = SyncRuntimeParts::new(registry)?;
        for system in systems {
            let name = system.spec().name();
            let table = config.system(name).cloned().unwrap_or_default();
            parts.add(name, system.published_limit(), table);
        }
        Ok(parts)
    }

    /// Adds the system `name`: a limiter on its published limit or the
    /// table's overrides, its health `ok`. A name added again is replaced.
    pub fn add(
        &mut self,
        name: &str,
        published: PublishedLimit,
        config: SyncSystemConfig,
    ) -> Arc<SystemParts> {
        let limiter = Arc::new(Limiter::for_system(
            LimitSpec::from_published(published, &config),
            config.concurrency,
        ));
        let health = Arc::new(SyncHealth::new(name, self.state_gauge.clone()));
        let parts = Arc::new(SystemParts {
            name: name.to_owned(),
            config,
            limiter,
            health,
        });
        self.systems.insert(name.to_owned(), Arc::clone(&parts));
        parts
    }

    pub fn get(&self, name: &str) -> Option<&Arc<SystemParts>> {
        self.systems.get(name)
    }

    /// Every system's parts, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SystemParts>> {
        self.systems.values()
    }

    pub fn is_empty(&self) -> bool {
        self.systems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sync::health::SyncState;

    #[test]
    fn each_system_gets_its_limiter_and_health() {
        let registry = Registry::new();
        let mut parts = SyncRuntimeParts::new(&registry).expect("parts");
        let overrides = SyncSystemConfig {
            per_second: Some(1.0),
            ..SyncSystemConfig::default()
        };
        let crm = parts.add(
            "crm",
            PublishedLimit::Bucket {
                burst: 50,
                per_second: 2.0,
            },
            overrides,
        );
        parts.add(
            "other",
            PublishedLimit::Interval {
                interval: Duration::from_millis(143),
            },
            SyncSystemConfig::default(),
        );
        assert_eq!(
            crm.limiter.spec(),
            LimitSpec::Bucket {
                burst: 50,
                per_second: 1.0
            }
        );
        assert_eq!(
            parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["crm", "other"]
        );
        crm.health.blocked("403");
        let other = parts.get("other").expect("other");
        assert_eq!(other.health.state(), SyncState::Ok);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(
            text.contains("cti_sync_state{state=\"blocked\",system=\"crm\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cti_sync_state{state=\"ok\",system=\"other\"} 1"),
            "{text}"
        );
    }
}
