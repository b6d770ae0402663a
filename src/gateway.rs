//! Assembles the gateway from its configuration and runs it.
//!
//! Start-up order matters for the ring-time promise: the listener is bound
//! first, then the snapshot from the store is loaded (a restart answers
//! known callers before any source is read), then the sources start.
//!
//! Only the snapshot sets of configured sources are loaded: a set whose
//! source was removed from the configuration stays in the store, named in a
//! warning at each start, until its source is configured again or
//! `cti-gateway forget-source` drops it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, PaymentsSource};
use crate::directory::{self, Directory};
use crate::http::{self, Front};
use crate::metrics::Metrics;
use crate::popup::{Hub, HubConfig};
use crate::soap;
use crate::sources::file::{self, FileSettings, FileSource};
use crate::sources::onec::{self, OnecError, OnecSource};
use crate::sources::push::{self, PushSource};
use crate::sources::servio::{self, ServioSettings, ServioSource};
use crate::sources::LowPriority;
use crate::sources::{SnapshotSavers, SourceHealth};
use crate::store::{DiskGate, OpenOptions, SourceSnapshot, Store, StoreError};
use crate::sync::crm_source::CrmRecords;
use crate::sync::inbound::Applier;
use crate::sync::inbox::{InboxMetrics, InboxTask};
use crate::sync::jobs::SyncJobs;
use crate::sync::onec::payments::poll::PaymentsPoll;
use crate::sync::onec::payments::{self, Payments, PaymentsMetrics};
use crate::sync::parts::SyncRuntimeParts;
use crate::sync::runtime::{Runtime, RuntimeMetrics};
use crate::sync::system::{Attach, System};
use crate::sync::{self, Feed, FeedMetrics, FeedSettings, Registry, RegistryError};
use crate::vats::Vats;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}; check server.listen (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("metrics registry: {0}")]
    Metrics(prometheus::Error),
    #[error("TLS cannot start: {0}")]
    Tls(#[from] http::tls::TlsError),
    #[error("the 1C source cannot start: {0}")]
    Onec(#[from] OnecError),
    /// A configuration the HTTP front cannot serve (`soap.path` on one of
    /// its own endpoints).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A sync system's registration the core refuses.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the sync feed cannot start: {0}")]
    SyncFeed(std::io::Error),
    /// `[servio]`'s mapping file, or the source's worker.
    #[error(transparent)]
    ServioMapping(#[from] servio::MappingError),
    #[error("the SERVIO source cannot start: {0}")]
    Servio(String),
}

/// How the directory was first filled, for the start-up message.
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    pub snapshot_records: usize,
    pub counterparties: usize,
    pub ready_after: std::time::Duration,
}

/// A running gateway. Dropping it does not stop it: call [`Gateway::shutdown`].
pub struct Gateway {
    addr: SocketAddr,
    directory: Arc<Directory>,
    hub: Arc<Hub>,
    store: Store,
    /// The 1C snapshot's own store (with `[onec]`).
    onec_store: Option<Store>,
    /// SERVIO's snapshot and ledger (with `[servio]`).
    servio_store: Option<Store>,
    /// With a sync system registered: the sync store and the change feed.
    sync: Option<SyncParts>,
    /// Each sending system's limiter and health (none without one).
    sync_systems: Arc<SyncRuntimeParts>,
    metrics: Arc<Metrics>,
    reload: watch::Sender<u64>,
    stop_server: Arc<Notify>,
    stop_sources: watch::Sender<bool>,
    server: JoinHandle<()>,
    sources: Vec<JoinHandle<()>>,
    report: StartReport,
}

/// What syncing adds to a gateway: the sync store, and with a system
/// registered the change feed and each system's CRM-only records.
struct SyncParts {
    store: Store,
    feed: Option<Feed>,
    crm: Vec<Arc<CrmRecords>>,
    /// Each system's inbound path (what the sync runtime hands a system's
    /// records to; the linker's too).
    inbound: Vec<Arc<Applier>>,
    /// The workers' handles (resume), made before the front.
    runtime: Runtime,
}

/// What the feed's and the linker's tasks take once the sources loaded.
struct SyncInputs {
    feed: sync::feed::FeedInput,
    link_sink: sync::link::LinkSink,
    link: sync::link::LinkInput,
}

/// The names of `systems`.
fn registry_names(systems: &[Arc<dyn System>]) -> Vec<&str> {
    systems.iter().map(|s| s.spec().name()).collect()
}

impl Gateway {
    /// Binds, loads the snapshot and the sources, and returns once the
    /// directory is as complete as start-up can make it.
    /// The sync systems are this build's ([`sync::build_systems`]: the 1C
    /// writer when `[sync.onec]` asks for it).
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let systems = sync::build_systems(&config);
        Gateway::start_with(config, systems).await
    }

    /// [`Gateway::start`] with the sync systems this build (or a test) has.
    /// A system starts only when its `[sync.<name>]` table is set (its spec,
    /// [`System::spec`], registered with the core: then the sync store is
    /// opened and the change feed runs); a table no system claims stops
    /// start-up naming it (see [`Config::check_sync_tables`]). With no
    /// system started, no sync file is created.
    pub async fn start_with(
        config: Config,
        systems: Vec<Arc<dyn System>>,
    ) -> Result<Gateway, StartError> {
        Gateway::start_with_feed(config, systems, FeedSettings::default()).await
    }

    /// [`Gateway::start_with`] with the feed's settings (tests: a tiny
    /// channel, a short retry).
    #[doc(hidden)]
    pub async fn start_with_feed(
        config: Config,
        systems: Vec<Arc<dyn System>>,
        feed_settings: FeedSettings,
    ) -> Result<Gateway, StartError> {
        Gateway::start_inner(config, systems, feed_settings).await
    }

    async fn start_inner(
        config: Config,
        systems: Vec<Arc<dyn System>>,
        feed_settings: FeedSettings,
    ) -> Result<Gateway, StartError> {
        let started = Instant::now();
        let systems = configured_systems(&config, systems)?;
        let registry = Registry::new(systems.iter().map(|s| s.spec().clone()).collect())?;
        http::check_soap_path(&config)?;
        // A bad SERVIO mapping stops start-up before anything is opened.
        let servio_mapping = match &config.servio {
            Some(servio) => Some(servio::Mapping::load(&servio.mapping)?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        // Each sending system's limiter and health: its worker takes them
        // from here, `/readyz` and the status API show them.
        let sync_systems = Arc::new(
            SyncRuntimeParts::build(metrics.registry(), &systems, &config.sync)
                .map_err(StartError::Metrics)?,
        );
        // Before anything is opened: a bad certificate stops start-up at once.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => {
                let expiry = metrics
                    .tls_certificate_expiry()
                    .map_err(StartError::Metrics)?;
                Some(Arc::new(http::tls::Tls::new(cert, key, expiry)?))
            }
            _ => None,
        };
        // Bound before the store is opened: a port already taken stops
        // start-up before anything is created on disk (no `var/` left behind).
        let (listener, addr) = bind(config.server.listen).await?;
        let store = open_main_store(&config, &metrics)?;
        let (sync, sync_failure) =
            open_sync(&config, &metrics, &registry, &feed_settings, &systems)?;
        // Systems that write the sync store themselves (the 1C writer's
        // conflicts) get it before anything is sent.
        if let Some((parts, _)) = &sync {
            for system in &systems {
                system.attach(&Attach {
                    store: &parts.store,
                    registry: metrics.registry(),
                    feed: parts.feed.as_ref(),
                    limiter: sync_systems
                        .get(system.spec().name())
                        .map(|part| &part.limiter),
                });
            }
        }
        let directory = Directory::new(soap::say_name_payload)
            .counting_unusable_phones(metrics.directory_unusable_phones.clone())
            .counting_invalid_requisites(metrics.directory_invalid_requisites.clone())
            .with_managers(managers(&config))
            .with_manager_rules(manager_rules(&config))
            .counting_unmapped_managers(metrics.sync_unmapped_managers.clone());
        // The feed hears every change from the first source load on (the
        // snapshot's load is not a change; the start-up reconcile covers it).
        // So does the linker of CRM-only records to the same clients.
        let directory = Arc::new(match &sync {
            Some((
                SyncParts {
                    feed: Some(feed), ..
                },
                Some(inputs),
            )) => directory.reporting_changes(inputs.link_sink.after(feed.sink())),
            _ => directory,
        });
        let health = Arc::new(SourceHealth::default());
        // Payments have nowhere to go without the sync store: say so where
        // the poll's own failures show.
        if let (Some(_), Some(why)) = (&config.payments, &sync_failure) {
            health.failure(
                payments::HEALTH_NAME,
                &format!("payments cannot be committed: the sync store did not open ({why})"),
            );
        }
        let hub = Arc::new(new_hub(&config, &metrics, &store).await?);
        // Sources that save their snapshot in the background; a delete through
        // the push API asks them to save again.
        let savers = Arc::new(SnapshotSavers::default());
        // 1C writes the requisites it reads (director, addresses, bank
        // details) to the sync store, when there is one.
        let sync_store = sync.as_ref().map(|(parts, _)| parts.store.clone());
        let (onec, onec_store) =
            open_onec(&config, &directory, &health, &metrics, &savers, sync_store)?;
        let file = open_file(&config, &directory, &store, &health, &metrics, &savers);
        let (servio, servio_store) =
            open_servio(&config, servio_mapping, &directory, &health, &metrics)?;
        let vats = new_vats(&directory, &hub, &store, &metrics, onec.as_ref());
        let push = PushSource::new(Arc::clone(&directory), store.clone(), metrics.registry())
            .map(Arc::new)
            .map_err(StartError::Metrics)?;
        let front = Front::new(
            &config,
            vats,
            Arc::clone(&directory),
            Arc::clone(&health),
            Arc::clone(&metrics),
            Arc::clone(&hub),
            store.clone(),
            Arc::clone(&push),
            file.clone(),
        );
        // Backups copy 1C's snapshot too: rebuilding it means reading 1C again.
        let front = match &onec_store {
            Some(onec_store) => front.backing_up_too(onec_store.clone()),
            None => front,
        };
        // And the sync store: its id links are what keeps a CRM free of
        // duplicates (backed up with the others), and the sync API reads it.
        // 1C's pull exchange, when it is served: its sweep of ended leases
        // starts with the sync runtime's workers.
        let mut onec_pull = None;
        let front = match &sync {
            Some((parts, _)) => {
                let runtime = parts.runtime.clone();
                let front = front
                    .with_sync_store(parts.store.clone(), synced_systems(&config, &registry))
                    .with_sync_systems(sync_systems_view(Arc::clone(&sync_systems)))
                    .with_sync_resume(Arc::new(move |system: &str| runtime.resume(system)));
                let (front, pull) = with_onec_pull(front, &config, &parts.store, &metrics)?;
                onec_pull = pull;
                front
            }
            None => match sync_failure {
                Some(why) => front.with_sync_store_failed(&config, systems.clone(), why),
                None => front,
            },
        };
        // Payments (`[payments]`), committed to the sync store with an
        // outbox row per system that takes them.
        let payments = match (&config.payments, &sync) {
            (Some(payments), Some((parts, _))) => {
                let metrics =
                    PaymentsMetrics::register(metrics.registry()).map_err(StartError::Metrics)?;
                let subscribers = registry
                    .systems()
                    .iter()
                    .filter(|s| s.takes_payments())
                    .map(|s| s.name().to_owned())
                    .collect();
                Some(Payments::new(
                    parts.store.clone(),
                    payments.source,
                    subscribers,
                    metrics,
                ))
            }
            _ => None,
        };
        let front = match &payments {
            Some(payments) => front.with_payments(Arc::clone(payments)),
            None => front,
        };
        let payments_poll = match (&payments, &config.payments, &config.onec, &onec) {
            (Some(payments), Some(settings), Some(onec_config), Some(onec))
                if settings.source == PaymentsSource::Odata =>
            {
                Some(
                    PaymentsPoll::new(
                        settings,
                        onec_config,
                        Arc::clone(payments),
                        Arc::clone(&health),
                        onec.worker(),
                    )
                    .map_err(|e| StartError::Onec(OnecError::Odata(e)))?,
                )
            }
            _ => None,
        };
        // The systems' webhooks go to their inbox from the first request
        // on; each system's task applies it once the sources have loaded.
        let inboxes: Vec<(Arc<dyn System>, Arc<Notify>)> = systems
            .iter()
            .map(|s| (Arc::clone(s), Arc::new(Notify::new())))
            .collect();
        let (front, inbox_metrics, runtime_metrics) = match &sync {
            Some((
                SyncParts {
                    store,
                    feed: Some(feed),
                    ..
                },
                _,
            )) => {
                let inbox_metrics = InboxMetrics::new(metrics.registry(), &registry)
                    .map_err(StartError::Metrics)?;
                // The workers' requests and the relinks' lists alike.
                let runtime_metrics =
                    RuntimeMetrics::new(metrics.registry(), &registry_names(&systems))
                        .map_err(StartError::Metrics)?;
                let jobs = SyncJobs::new(
                    systems.clone(),
                    Arc::clone(&directory),
                    store.clone(),
                    feed.clone(),
                    Arc::clone(&sync_systems),
                    runtime_metrics.clone(),
                );
                let front = front.with_sync_webhooks(
                    &config,
                    store.clone(),
                    inboxes.clone(),
                    inbox_metrics.clone(),
                    jobs,
                );
                (front, Some(inbox_metrics), Some(runtime_metrics))
            }
            _ => (front, None, None),
        };
        let (reload, _) = watch::channel(0u64);
        let (stop_sources, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let front = match tls {
            Some(tls) => {
                let watch = Arc::clone(&tls).watch(reload.subscribe(), stop_sources.subscribe());
                tasks.push(tokio::spawn(watch));
                front.with_tls(tls)
            }
            None => front,
        };
        let (server, stop_server) = serve(listener, front, &config);
        tracing::info!(%addr, soap_path = %config.soap.path, "listening");

        // Deleted copies stay hidden from the first set loaded on.
        directory.set_tombstones(&store.load_tombstones().await?);
        let mut snapshot_records =
            load_snapshot(&config, &store, onec_store.as_ref(), &directory).await;
        if let Some(servio_store) = &servio_store {
            snapshot_records += load_servio_snapshot(servio_store, &directory).await;
        }
        if let Some((parts, _)) = &sync {
            snapshot_records += load_crm_snapshot(&parts.store, &registry, &directory).await;
            // The CRMs' managers, links and numbers over the records just loaded.
            if let Err(e) = crate::sources::overlays::load(&parts.store, &directory).await {
                tracing::error!(error = %e, "CRM overlays not loaded from the sync store: records answer with their own managers until a CRM sets them again");
            }
        }
        push.snapshot_loaded();

        let keeper = forget_spent_tombstones(Arc::clone(&push), stop_sources.subscribe());
        let tombstone_keeper = tokio::spawn(keeper);
        let mut sources = SourceContext {
            directory: &directory,
            reload: &reload,
            stop: &stop_sources,
        }
        .start(file, onec, servio)
        .await;
        sources.push(tombstone_keeper);
        if let Some(poll) = payments_poll {
            sources.push(tokio::spawn(
                poll.run(reload.subscribe(), stop_sources.subscribe()),
            ));
        }
        // After the sources' first loads: the feed's start-up reconcile
        // compares the directory as it stands with the id-maps.
        let sync = match sync {
            Some((mut parts, Some(inputs))) => {
                for system in registry.systems() {
                    let records = Arc::new(CrmRecords::new(
                        system.name(),
                        Arc::clone(&directory),
                        parts.store.clone(),
                    ));
                    sources.push(tokio::spawn(
                        Arc::clone(&records).run(stop_sources.subscribe()),
                    ));
                    if let Some(feed) = &parts.feed {
                        parts.inbound.push(Arc::new(Applier::new(
                            system.clone(),
                            Arc::clone(&directory),
                            parts.store.clone(),
                            feed.clone(),
                            Arc::clone(&records),
                        )));
                    }
                    parts.crm.push(records);
                }
                sources.push(sync::link::spawn(
                    inputs.link,
                    Arc::clone(&directory),
                    parts.inbound.clone(),
                    stop_sources.subscribe(),
                ));
                if let Some(inbox_metrics) = &inbox_metrics {
                    let low = Arc::new(
                        LowPriority::start("cti-sync-inbox").map_err(StartError::SyncFeed)?,
                    );
                    for (system, wake) in inboxes {
                        // The same inbound path as the linker's: one turn per system.
                        let Some(applier) = parts
                            .inbound
                            .iter()
                            .find(|a| a.system() == system.spec().name())
                        else {
                            continue;
                        };
                        let task = InboxTask::new(
                            system,
                            Arc::clone(applier),
                            parts.store.clone(),
                            inbox_metrics.clone(),
                            wake,
                        );
                        sources.push(tokio::spawn(
                            task.run(Arc::clone(&low), stop_sources.subscribe()),
                        ));
                    }
                }
                let feed = sync::feed::spawn(
                    inputs.feed,
                    Arc::clone(&directory),
                    registry,
                    parts.store.clone(),
                    stop_sources.subscribe(),
                )
                .map_err(StartError::SyncFeed)?;
                sources.push(feed);
                // The senders, once the feed runs (its start-up reconcile
                // queues what the last run left unqueued).
                let metrics = match runtime_metrics {
                    Some(m) => m,
                    None => RuntimeMetrics::new(metrics.registry(), &registry_names(&systems))
                        .map_err(StartError::Metrics)?,
                };
                let workers = sync::runtime::spawn(
                    &parts.runtime,
                    &systems,
                    &sync_systems,
                    &parts.store,
                    &metrics,
                    &stop_sources,
                )
                .map_err(StartError::SyncFeed)?;
                sources.extend(workers);
                Some(parts)
            }
            Some((parts, None)) => Some(parts),
            None => None,
        };
        // Under `transport = "pull"` no worker runs for `onec`: its leases
        // end at 1C's next poll, or by this sweep, beside the workers, when
        // 1C stops polling (a row leased too often dies all the same).
        if let Some(pull) = onec_pull {
            sources.push(tokio::spawn(pull.run_sweeps(stop_sources.subscribe())));
        }
        sources.push(tokio::spawn(crate::store::keep_journal_for(
            store.clone(),
            config.store.journal_retention,
            stop_sources.subscribe(),
        )));
        sources.extend(tasks);

        Ok(Gateway {
            report: StartReport {
                snapshot_records,
                counterparties: directory.snapshot().len(),
                ready_after: started.elapsed(),
            },
            addr,
            directory,
            hub,
            store,
            onec_store,
            servio_store,
            sync,
            sync_systems,
            metrics,
            reload,
            stop_server,
            stop_sources,
            server,
            sources,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sync store, when a sync system is registered.
    pub fn sync_store(&self) -> Option<&Store> {
        self.sync.as_ref().map(|s| &s.store)
    }

    /// `system`'s CRM-only records (a source named after it), when it is registered.
    pub fn crm_records(&self, system: &str) -> Option<&Arc<CrmRecords>> {
        self.sync
            .as_ref()
            .and_then(|s| s.crm.iter().find(|c| c.source() == system))
    }

    /// Each sending system's limiter and health, by name.
    pub fn sync_systems(&self) -> &Arc<SyncRuntimeParts> {
        &self.sync_systems
    }

    /// `system`'s inbound path (`sync::inbound`), when it is registered.
    pub fn inbound(&self, system: &str) -> Option<&Arc<Applier>> {
        self.sync
            .as_ref()
            .and_then(|s| s.inbound.iter().find(|a| a.system() == system))
    }

    /// The change feed, when a sync system is registered.
    pub fn sync_feed(&self) -> Option<&Feed> {
        self.sync.as_ref().and_then(|s| s.feed.as_ref())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn start_report(&self) -> &StartReport {
        &self.report
    }

    /// Re-reads the sources now (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.send_modify(|generation| *generation += 1);
    }

    /// A handle that triggers [`Gateway::reload`] from elsewhere (a signal task).
    pub fn reload_handle(&self) -> watch::Sender<u64> {
        self.reload.clone()
    }

    /// Stops accepting, lets requests in flight finish (within
    /// `server.shutdown_grace`), closes screens and flushes the store.
    pub async fn shutdown(self) {
        self.stop_server.notify_one();
        // Screens first: WebSocket screens get their close 1001 and waiting
        // long-polls answer at once, instead of holding the server's grace
        // period. Calls still in flight are still numbered and journaled.
        self.hub.shutdown();
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        self.stop_sources.send_replace(true);
        for task in self.sources {
            let _ = task.await;
        }
        if let Some(onec_store) = &self.onec_store {
            onec_store.close().await;
        }
        if let Some(servio_store) = &self.servio_store {
            servio_store.close().await;
        }
        if let Some(sync) = &self.sync {
            sync.store.close().await;
        }
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// The main store at `store.path`. A missing or empty file there is refused
/// where a store was (see [`OpenOptions::new_store`]) unless `--new-store`
/// was given.
fn open_main_store(config: &Config, metrics: &Metrics) -> Result<Store, StoreError> {
    // 1C's snapshot file and the sync store exist only beside a store that
    // was written: with one there, a missing store file is a lost store,
    // not a new one.
    // The journal's commits hold the sync store's disk writes (`DiskGate`).
    let options = OpenOptions::main()
        .disk_gate(DiskGate::process())
        .new_store(config.store.new_store)
        .companion(onec_store_path(&config.store.path))
        .companion(sync_store_path(&config.store.path));
    Store::open_with_options(&config.store.path, metrics.registry(), &options)
}

/// The front serving 1C's pull exchange from the sync store, under
/// `[sync.onec] transport = "pull"`, and the exchange (for its sweep); as
/// it was otherwise.
fn with_onec_pull(
    front: Front,
    config: &Config,
    store: &Store,
    metrics: &Metrics,
) -> Result<(Front, Option<sync::onec::pull::Pull>), StartError> {
    let Some(table) = config
        .sync
        .system(crate::config::ONEC_SYSTEM)
        .filter(|t| t.pulled())
    else {
        return Ok((front, None));
    };
    let pull_metrics =
        sync::onec::pull::PullMetrics::new(metrics.registry()).map_err(StartError::Metrics)?;
    let pull = sync::onec::pull::Pull::new(store.clone(), table, pull_metrics);
    Ok((front.with_onec_pull(pull.clone()), Some(pull)))
}

/// What `/readyz` and the sync status API show of each sending system,
/// read from its health and limiter when asked.
fn sync_systems_view(parts: Arc<SyncRuntimeParts>) -> http::SyncSystemsView {
    Arc::new(move || {
        parts
            .iter()
            .map(|system| {
                let health = system.health.report();
                let limiter = system.limiter.snapshot();
                http::SyncSystemView {
                    name: system.name.clone(),
                    state: health.state.name(),
                    failing: health.state.is_failing(),
                    reason: health.reason,
                    since: health.since,
                    last_success: health.last_success,
                    limited_until: health.limited_until,
                    rate_per_second: limiter.rate_per_second,
                    tokens: limiter.tokens,
                    paused_until: limiter.paused_until,
                    // The 1C writer's worker runs only for OData writes.
                }
            })
            .collect()
    })
}

/// Of `systems`, those with a `[sync.<name>]` table, in the order given;
/// a table none of them claims stops start-up (but for the product's own
/// system names, whose modules a build may lack: warned about, the table
/// keeps the sync store). A system without a table is not started: a build
/// carries every module, the configuration picks.
fn configured_systems(
    config: &Config,
    systems: Vec<Arc<dyn System>>,
) -> Result<Vec<Arc<dyn System>>, StartError> {
    let names: Vec<&str> = systems.iter().map(|s| s.spec().name()).collect();
    config.check_sync_tables(&names)?;
    for (name, _) in config.sync.systems() {
        if !names.contains(&name) {
            tracing::warn!(
                system = name,
                "[sync.{name}] is set but this build has no module for it: nothing is sent to it; the sync store is kept for its admin API and overlays"
            );
        }
    }
    let (started, idle): (Vec<_>, Vec<_>) = systems
        .into_iter()
        .partition(|s| config.sync.system(s.spec().name()).is_some());
    for system in idle {
        tracing::debug!(
            system = system.spec().name(),
            "sync system not started: no [sync.{}] table",
            system.spec().name()
        );
    }
    Ok(started)
}

/// The systems this gateway syncs: those registered and those with a
/// `[sync.<system>]` section, each once, by name.
fn synced_systems(config: &Config, registry: &Registry) -> Vec<String> {
    let mut systems: Vec<String> = registry
        .systems()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    for (name, _) in config.sync.systems() {
        if !systems.iter().any(|s| s == name) {
            systems.push(name.to_owned());
        }
    }
    systems.sort();
    systems
}

/// The sync parts, and the feed's input when a system is registered.
type OpenedSync = (SyncParts, Option<SyncInputs>);

/// With a sync system registered or a `[sync.<system>]` configured: the
/// sync store (its admin API, its overlays); with a system registered, also
/// the change feed whose input [`sync::feed::spawn`] takes once the sources
/// have loaded. `None` without either (no sync file appears on an install
/// that does not sync), or when the sync store does not open: then also why
/// (logged here, reported by `/readyz`).
fn open_sync(
    config: &Config,
    metrics: &Metrics,
    registry: &Registry,
    settings: &FeedSettings,
    systems: &[Arc<dyn System>],
) -> Result<(Option<OpenedSync>, Option<String>), StartError> {
    // Payments are committed to the sync store too.
    if registry.is_empty() && !config.sync.configured() && config.payments.is_none() {
        return Ok((None, None));
    }
    // A sync file that will not open costs no call: the gateway answers
    // without syncing, and the next start's reconcile sends what changed.
    let store = match open_sync_store(config, metrics) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(
                error = %e,
                path = %sync_store_path(&config.store.path).display(),
                "the sync store did not open: calls are answered, nothing is synced until a restart opens it"
            );
            return Ok((None, Some(e.to_string())));
        }
    };
    if registry.is_empty() {
        let parts = SyncParts {
            store,
            feed: None,
            crm: Vec::new(),
            inbound: Vec::new(),
            runtime: Runtime::default(),
        };
        return Ok((Some((parts, None)), None));
    }
    let feed_metrics =
        FeedMetrics::new(metrics.registry(), registry).map_err(StartError::Metrics)?;
    let (feed, input) = sync::feed::channel(settings, feed_metrics);
    let (link_sink, link) =
        sync::link::channel(registry.systems().iter().map(|s| s.name().to_owned()));
    let parts = SyncParts {
        store,
        feed: Some(feed),
        crm: Vec::new(),
        inbound: Vec::new(),
        runtime: Runtime::new(systems),
    };
    let inputs = SyncInputs {
        feed: input,
        link_sink,
        link,
    };
    Ok((Some((parts, Some(inputs))), None))
}

/// The pop-up hub, with the configured operators' keys.
async fn new_hub(config: &Config, metrics: &Metrics, store: &Store) -> Result<Hub, StartError> {
    // The hub is handed the abonent keys only; the screens' tokens stay with
    // the HTTP front, which resolves an operator from its token.
    let keys = config.operators.iter().map(|o| o.key.as_str());
    let hub = Hub::new(keys, HubConfig::from(&config.popup), metrics.registry())
        .map_err(StartError::Metrics)?;
    // Each key's pop-up numbers continue from the journal's, so a screen
    // reconnecting with the `after` it saw before a restart misses nothing.
    hub.continue_seqs(store.last_seqs().await?);
    Ok(hub)
}

/// The PBX's two operations, with 1C's live lookup when `[onec]` is set.
fn new_vats(
    directory: &Arc<Directory>,
    hub: &Arc<Hub>,
    store: &Store,
    metrics: &Arc<Metrics>,
    onec: Option<&OnecSource>,
) -> Vats {
    let vats = Vats::new(
        Arc::clone(directory),
        Arc::clone(hub),
        store.clone(),
        Arc::clone(metrics),
    );
    match onec {
        Some(onec) => vats.with_live_lookup(onec.live_lookup()),
        None => vats,
    }
}

/// Until `stop`: the store forgets the tombstones sources' changed copies spent.
async fn forget_spent_tombstones(push: Arc<PushSource>, stop: watch::Receiver<bool>) {
    push.forget_spent_tombstones(stop).await
}

/// The listener on `addr`, and the address it got (the port of `:0`).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bound = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// With `[onec]`: the 1C source and its own store. 1C's snapshot is a cache
/// of 1C, saved after each refresh that changed something, possibly every
/// record: it has a file of its own and a writer at the lowest priority (see
/// `Store::open_background`).
fn open_onec(
    config: &Config,
    directory: &Arc<Directory>,
    health: &Arc<SourceHealth>,
    metrics: &Metrics,
    savers: &Arc<SnapshotSavers>,
    sync_store: Option<Store>,
) -> Result<(Option<OnecSource>, Option<Store>), StartError> {
    let Some(onec_config) = &config.onec else {
        return Ok((None, None));
    };
    let onec_store = Store::open_with_options(
        &onec_store_path(&config.store.path),
        metrics.registry(),
        &OpenOptions::cache(onec::SOURCE).new_store(config.store.new_store),
    )?;
    let onec = OnecSource::new(
        onec_config,
        onec_users(config),
        Arc::clone(directory),
        onec::OnecStores {
            snapshot: onec_store.clone(),
            sync: sync_store,
        },
        Arc::clone(health),
        metrics.registry(),
        savers,
    )?;
    Ok((Some(onec), Some(onec_store)))
}

/// With `[servio]`: the SERVIO source and its own store
/// (`<name>.servio.sqlite`: SERVIO's snapshot and the ledger of files taken).
fn open_servio(
    config: &Config,
    mapping: Option<servio::Mapping>,
    directory: &Arc<Directory>,
    health: &Arc<SourceHealth>,
    metrics: &Metrics,
) -> Result<(Option<ServioSource>, Option<Store>), StartError> {
    let (Some(servio_config), Some(mapping)) = (&config.servio, mapping) else {
        return Ok((None, None));
    };
    let servio_store = Store::open_with_options(
        &servio_store_path(&config.store.path),
        metrics.registry(),
        &OpenOptions::servio().new_store(config.store.new_store),
    )?;
    let source = ServioSource::new(
        ServioSettings::from_config(servio_config, config.directory.max_shrink),
        mapping,
        Arc::clone(directory),
        servio_store.clone(),
        Arc::clone(health),
        metrics.registry(),
    )
    .map_err(StartError::Servio)?;
    Ok((Some(source), Some(servio_store)))
}

/// SERVIO's records from its own store; returns the records loaded.
async fn load_servio_snapshot(servio_store: &Store, directory: &Arc<Directory>) -> usize {
    match servio_store.load_snapshot().await {
        Ok(sets) => {
            let sets = sets
                .into_iter()
                .filter(|s| s.source == servio::SOURCE)
                .collect();
            load_sets(directory, sets).await
        }
        Err(e) => {
            tracing::error!(error = %e, "SERVIO snapshot not loaded; SERVIO clients answer after the next file");
            0
        }
    }
}

/// With `directory.file`: the file source. It reads nothing yet: its first
/// load comes after the snapshot's (`SourceContext::start`).
fn open_file(
    config: &Config,
    directory: &Arc<Directory>,
    store: &Store,
    health: &Arc<SourceHealth>,
    metrics: &Arc<Metrics>,
    savers: &SnapshotSavers,
) -> Option<Arc<FileSource>> {
    let settings = FileSettings::from_config(&config.directory)?;
    Some(Arc::new(FileSource::new(
        settings,
        Arc::clone(directory),
        store.clone(),
        Arc::clone(health),
        Arc::clone(metrics),
        savers,
    )))
}

/// Runs the accept loop on its own task; it stops when the returned
/// `Notify` is notified.
fn serve(listener: TcpListener, front: Front, config: &Config) -> (JoinHandle<()>, Arc<Notify>) {
    let front = Arc::new(front);
    let stop = Arc::new(Notify::new());
    let stopped = Arc::clone(&stop);
    let settings = config.server.clone();
    let task = tokio::spawn(async move {
        http::server::run(listener, front, &settings, async move {
            stopped.notified().await
        })
        .await;
    });
    (task, stop)
}

/// What the sources are started with.
struct SourceContext<'a> {
    directory: &'a Arc<Directory>,
    reload: &'a watch::Sender<u64>,
    stop: &'a watch::Sender<bool>,
}

impl SourceContext<'_> {
    /// Loads the file (before returning, so a caller that waits for the
    /// start gets its directory) and starts every source's task.
    async fn start(
        self,
        file: Option<Arc<FileSource>>,
        onec: Option<OnecSource>,
        servio: Option<ServioSource>,
    ) -> Vec<JoinHandle<()>> {
        let mut sources = Vec::new();
        if let Some(servio) = servio {
            // Scans from now on, in the background (its first scan at once).
            sources.push(tokio::spawn(
                servio.run(self.reload.subscribe(), self.stop.subscribe()),
            ));
        }
        if let Some(file) = file {
            // The first load happens before start() returns, so a caller that
            // waits for start() gets the file's directory (or its error logged).
            file.load_at_start().await;
            sources.push(tokio::spawn(
                file.run(self.reload.subscribe(), self.stop.subscribe()),
            ));
        }
        if let Some(onec) = onec {
            // 1C is read in the background: a slow or absent 1C must not hold
            // up the start, and the snapshot (if any) already answers.
            sources.push(tokio::spawn(
                onec.run(self.reload.subscribe(), self.stop.subscribe()),
            ));
        }
        // Not ready until a source or the snapshot delivers, with or without
        // 1C: an empty directory nobody loaded would answer every caller as
        // unknown while /readyz said all is well.
        if !self.directory.is_loaded() {
            tracing::warn!("no counterparties yet (no snapshot, no readable source): /readyz answers 503 and callers are answered as unknown until a source loads");
        }
        sources
    }
}

/// Where the 1C snapshot is kept: beside `store.path`, named after it
/// (`var/cti-gateway.sqlite` → `var/cti-gateway.onec.sqlite`).
pub fn onec_store_path(store_path: &Path) -> PathBuf {
    store_path_beside(store_path, onec::SOURCE)
}

/// Where SERVIO's snapshot and ledger are kept: beside `store.path`
/// (`var/cti-gateway.sqlite` → `var/cti-gateway.servio.sqlite`).
pub fn servio_store_path(store_path: &Path) -> PathBuf {
    store_path_beside(store_path, servio::SOURCE)
}

/// Where the sync store is kept: beside `store.path`, named after it
/// (`var/cti-gateway.sqlite` → `var/cti-gateway.sync.sqlite`).
pub fn sync_store_path(store_path: &Path) -> PathBuf {
    store_path_beside(store_path, "sync")
}

/// `store.path` with `part` before its extension.
fn store_path_beside(store_path: &Path, part: &str) -> PathBuf {
    let stem = store_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cti-gateway".to_owned());
    let name = match store_path.extension() {
        Some(ext) => format!("{stem}.{part}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{part}"),
    };
    store_path.with_file_name(name)
}

/// The sync store at [`sync_store_path`]: its own file, writer thread and
/// metrics (`db="sync"`), so a sync file that fails (will not open, disk
/// full, read-only) never touches the journal's store. A missing file is
/// created (sync may be new on an existing install); an empty one, or a
/// missing one whose `-wal` is still there, is refused unless
/// `--new-store` (see [`OpenOptions::sync`]).
pub fn open_sync_store(config: &Config, metrics: &Metrics) -> Result<Store, StoreError> {
    Store::open_with_options(
        &sync_store_path(&config.store.path),
        metrics.registry(),
        &OpenOptions::sync()
            .disk_gate(DiskGate::process())
            .new_store(config.store.new_store),
    )
}

/// Fills the directory from the stores' snapshot sets of the sources
/// `config` has (see [`unconfigured`]); returns the records loaded.
async fn load_snapshot(
    config: &Config,
    store: &Store,
    onec_store: Option<&Store>,
    directory: &Arc<Directory>,
) -> usize {
    let started = Instant::now();
    let mut snapshot = read_snapshot(store, onec_store).await;
    snapshot.retain(|set| {
        let Some(reason) = unconfigured(config, &set.source) else {
            return true;
        };
        tracing::warn!(
            source = %set.source,
            records = set.records.len(),
            reason,
            "snapshot set not loaded: its source is not configured; it stays in the store \
             until the source is configured again, or `{}` drops it",
            forget_command(config, &set.source)
        );
        false
    });
    if config.onec.is_none() {
        warn_if_onec_store_left(config);
    }
    let total = load_sets(directory, snapshot).await;
    if total > 0 {
        tracing::info!(
            records = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "directory loaded from the snapshot"
        );
    }
    total
}

/// The CRM-only records of the registered systems, from the sync store's
/// snapshot sets (a set of a system no longer registered stays there,
/// named in a warning); returns the records loaded.
async fn load_crm_snapshot(
    sync_store: &Store,
    registry: &Registry,
    directory: &Arc<Directory>,
) -> usize {
    let mut sets = match sync_store.load_snapshot().await {
        Ok(sets) => sets,
        Err(e) => {
            tracing::error!(error = %e, "CRM-only records not loaded from the sync store");
            return 0;
        }
    };
    sets.retain(|set| {
        let registered = registry.get(&set.source).is_some();
        if !registered {
            tracing::warn!(
                source = %crate::logging::Escaped(&set.source),
                records = set.records.len(),
                "CRM-only records of a system that is not registered are not loaded; they stay in the sync store"
            );
        }
        registered
    });
    load_sets(directory, sets).await
}

/// Puts snapshot sets in the directory with their receive times; returns
/// the records loaded.
async fn load_sets(directory: &Arc<Directory>, snapshot: Vec<SourceSnapshot>) -> usize {
    let mut total = 0;
    for source in snapshot {
        let directory = Arc::clone(directory);
        let name = source.source.clone();
        let count = source.records.len();
        let loaded = tokio::task::spawn_blocking(move || {
            let received = source
                .received_at_ms
                .into_iter()
                .map(|t| t.and_then(|t| u64::try_from(t).ok()))
                .collect();
            directory.replace_source_received(
                &source.source,
                source.records,
                received,
                source.fingerprint,
                source.saved_at,
            )
        })
        .await;
        match loaded {
            Ok(_) => total += count,
            Err(e) => {
                tracing::error!(source = %name, error = %e, "snapshot of a source not loaded")
            }
        }
    }
    total
}

/// Why the snapshot set of `source` is not loaded with `config`: what
/// configures its source, which is not set; `None` when it is set. `push`
/// counts as configured while `api.token` is set (the push API answers only
/// then), `file` with `directory.file`, `onec` with `[onec]`.
fn unconfigured(config: &Config, source: &str) -> Option<&'static str> {
    let (configured, reason) = match source {
        file::SOURCE => (config.directory.file.is_some(), "directory.file is not set"),
        onec::SOURCE => (config.onec.is_some(), "there is no [onec] table"),
        servio::SOURCE => (config.servio.is_some(), "there is no [servio] table"),
        push::SOURCE => (
            config.api.token.is_some(),
            "api.token is not set (the push API is off)",
        ),
        _ => (false, "this build has no source of that name"),
    };
    (!configured).then_some(reason)
}

/// The command that drops `source`'s snapshot set from this configuration's store.
fn forget_command(config: &Config, source: &str) -> String {
    match &config.source {
        Some(path) => format!(
            "cti-gateway forget-source {source} --config {}",
            path.display()
        ),
        None => format!("cti-gateway forget-source {source}"),
    }
}

/// Without `[onec]`, 1C's snapshot file is not opened; when one is left
/// from a configuration that had `[onec]`, say so, as for any set not loaded.
fn warn_if_onec_store_left(config: &Config) {
    let path = onec_store_path(&config.store.path);
    if path.exists() {
        tracing::warn!(
            path = %path.display(),
            source = onec::SOURCE,
            reason = "there is no [onec] table",
            "1C's snapshot file is not loaded: its source is not configured; it stays \
             until [onec] is configured again, or `{}` deletes it",
            forget_command(config, onec::SOURCE)
        );
    }
}

/// Both stores' snapshot sets. The 1C source's records come from its own
/// store; a main store written before that store existed still holds them,
/// and answers for 1C until the 1C store has its first save, then they are
/// removed from it.
async fn read_snapshot(store: &Store, onec_store: Option<&Store>) -> Vec<SourceSnapshot> {
    let mut snapshot = match store.load_snapshot().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "snapshot not loaded; starting from the sources only");
            Vec::new()
        }
    };
    let Some(onec_store) = onec_store else {
        return snapshot;
    };
    match onec_store.load_snapshot().await {
        Ok(cached) => {
            let cached: Vec<_> = cached
                .into_iter()
                .filter(|s| s.source == onec::SOURCE)
                .collect();
            if !cached.is_empty() && snapshot.iter().any(|s| s.source == onec::SOURCE) {
                snapshot.retain(|s| s.source != onec::SOURCE);
                match store.forget_source(onec::SOURCE).await {
                    Ok(rows) => tracing::info!(
                        rows,
                        "1C's records moved to their own store; removed from the main store"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "1C's old records could not be removed from the main store; they are ignored")
                    }
                }
            }
            snapshot.extend(cached);
        }
        Err(e) => {
            tracing::error!(error = %e, "1C snapshot not loaded; 1C answers after its first read")
        }
    }
    snapshot
}

/// `[sync] manager_precedence` and `[[manager]]`'s user ids, as the
/// directory maps CRM users (see `directory::overlay`).
fn managers(config: &Config) -> directory::Managers {
    let mut managers = directory::Managers::new(&config.sync.manager_precedence);
    for m in &config.managers {
        for (system, _, user_id) in m.user_ids() {
            managers.map(
                system,
                user_id,
                directory::Manager {
                    extension: m.extension.trim().into(),
                    name: m.name.trim().into(),
                },
            );
        }
    }
    managers
}

/// The sources' rules for a manager chosen when a call is answered: with
/// `[servio]`, its clients without a manager of their own take the one of
/// another source's record with the same INN (`manager_from_inn`), else
/// `default_manager_phone` (see `directory::inherited`).
fn manager_rules(config: &Config) -> directory::ManagerRules {
    let mut rules = directory::ManagerRules::default();
    if let Some(servio) = &config.servio {
        rules.set(
            servio::SOURCE,
            directory::ManagerRule {
                by_inn: servio.manager_from_inn,
                default_phone: servio
                    .default_manager_phone
                    .as_deref()
                    .map(|p| p.trim().into()),
            },
        );
    }
    rules
}

/// `[[manager]] onec_user`: the 1C users `onec.manager_ref_field` names,
/// with the extension and name their clients' calls go to.
fn onec_users(config: &Config) -> onec::OnecUsers {
    config
        .managers
        .iter()
        .filter_map(|m| {
            let user = m.onec_user.as_deref()?.trim();
            Some((
                user.to_owned(),
                onec::OnecManager {
                    extension: m.extension.trim().to_owned(),
                    name: m.name.trim().to_owned(),
                },
            ))
        })
        .collect()
}
