//! [`Front`]: the endpoint groups and what they share, built once at
//! start-up. The route table that sends requests to them is `mod.rs`'s.

use std::sync::Arc;

use super::admin::Admin;
use super::allow::AllowLists;
use super::api::Api;
use super::client::ClientResolver;
use super::exchange::Exchange;
use super::limits::ConnectionLimits;
use super::ops::{Ops, SyncSystemsView};
use super::origin::AllowedOrigins;
use super::payments::PaymentsEndpoint;
use super::screens::Screens;
use super::soap::SoapEndpoint;
use super::sync::SyncAdmin;
use super::sync_jobs::JobEndpoints;
use super::throttle::AuthThrottle;
use super::tls::Tls;
use super::webhook::Webhooks;
use crate::config::Config;
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::popup::Hub;
use crate::sources::file::FileSource;
use crate::sources::push::PushSource;
use crate::sources::SourceHealth;
use crate::store::Store;
use crate::sync::inbox::InboxMetrics;
use crate::sync::jobs::SyncJobs;
use crate::sync::onec::payments::Payments;
use crate::sync::system::System;
use crate::vats::Vats;
use tokio::sync::Notify;

/// Everything a request handler needs, built once at start-up.
pub struct Front {
    pub(super) soap: SoapEndpoint,
    pub(super) screens: Screens,
    pub(super) api: Api,
    /// Pushed payments (`[payments] source = "push"`).
    pub(super) payments: PaymentsEndpoint,
    pub(super) admin: Admin,
    pub(super) sync: SyncAdmin,
    /// The sync systems' webhooks.
    pub(super) webhooks: Webhooks,
    /// A sync system's initial load and relink.
    pub(super) jobs: JobEndpoints,
    /// What 1C polls under `[sync.onec] transport = "pull"`.
    pub(super) exchange: Exchange,
    pub(super) ops: Ops,
    /// Who a request comes from (`server.trusted_proxies`).
    pub(super) clients: ClientResolver,
    /// Each endpoint group's address allow-list.
    pub(super) allow: AllowLists,
    /// Web origins whose pages may open operator screens.
    pub(super) origins: AllowedOrigins,
    /// Failed credential checks per address.
    pub(super) throttle: AuthThrottle,
    pub(super) metrics: Arc<Metrics>,
    /// Who may open a connection: `server.max_connections` slots (shared
    /// by HTTP connections and the WebSocket screens they upgrade into), the
    /// per-address limit and the PBX's reserved slots.
    limits: ConnectionLimits,
    /// The listener's TLS, with `server.tls_cert` and `server.tls_key`.
    tls: Option<Arc<Tls>>,
}

impl Front {
    // One handle per part it serves; built once, by the gateway only.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        vats: Vats,
        directory: Arc<Directory>,
        health: Arc<SourceHealth>,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        store: Store,
        push: Arc<PushSource>,
        file: Option<Arc<FileSource>>,
    ) -> Front {
        let limits = ConnectionLimits::new(config);
        Front {
            soap: SoapEndpoint::new(config, vats),
            screens: Screens::new(
                config,
                hub,
                store.clone(),
                limits.general_slots(),
                metrics.http_connections.clone(),
            ),
            api: Api::new(config, push, store.clone()),
            payments: PaymentsEndpoint::new(config),
            admin: Admin::new(config, file, Arc::clone(&directory), store),
            sync: SyncAdmin::new(config),
            webhooks: Webhooks::new(config),
            jobs: JobEndpoints::new(config),
            exchange: Exchange::new(config),
            ops: Ops::new(directory, health, Arc::clone(&metrics)),
            clients: ClientResolver::new(&config.server.trusted_proxies),
            allow: AllowLists::new(config),
            origins: AllowedOrigins::new(&config.popup.allowed_origins),
            throttle: AuthThrottle::new(
                config.server.auth_failures_per_minute,
                config.server.auth_block,
            ),
            metrics,
            limits,
            tls: None,
        }
    }

    /// The same front, its backups copying `store` too (1C's snapshot).
    pub fn backing_up_too(mut self, store: Store) -> Front {
        self.admin.backing_up_too(store);
        self
    }

    /// The same front, its sync admin API served from `store` (the sync
    /// store), which backups copy too.
    pub fn with_sync_store(mut self, store: Store, systems: Vec<String>) -> Front {
        self.ops.report_sync_open();
        self.admin.backing_up_too(store.clone());
        self.sync.serve_from(store, systems);
        self
    }

    /// The same front, `/readyz` and the sync status API showing each
    /// sending system's state and limiter.
    pub fn with_sync_systems(mut self, systems: SyncSystemsView) -> Front {
        self.ops.report_sync_systems(Arc::clone(&systems));
        self.sync.report_systems(systems);
        self
    }

    /// The same front, `POST /api/v1/sync/{system}/resume` reaching the
    /// sync workers through `resume`.
    pub fn with_sync_resume(mut self, resume: crate::http::sync::Resume) -> Front {
        self.sync.resuming_with(resume);
        self
    }

    /// The same front, taking the webhooks of `systems` (each with the
    /// waker of its inbox task) into `store`'s inbox, and starting their
    /// initial loads and relinks with `jobs`.
    pub fn with_sync_webhooks(
        mut self,
        config: &Config,
        store: Store,
        systems: Vec<(Arc<dyn System>, Arc<Notify>)>,
        metrics: InboxMetrics,
        jobs: SyncJobs,
    ) -> Front {
        self.webhooks.serve(config, store, systems, metrics);
        self.sync.show_jobs(jobs.clone());
        self.jobs.serve(jobs);
        self
    }

    /// The same front, serving 1C's pull exchange from `pull` (and the
    /// sync status showing its leased rows).
    pub fn with_onec_pull(mut self, pull: crate::sync::onec::pull::Pull) -> Front {
        self.sync.report_pull(pull.clone());
        self.exchange.serve(pull);
        self
    }

    /// The same front, the sync store having failed to open (`why`):
    /// `/readyz` says so, the sync API and the webhooks of `systems` (the
    /// started ones) answer 503.
    pub fn with_sync_store_failed(
        mut self,
        config: &Config,
        systems: Vec<Arc<dyn System>>,
        why: String,
    ) -> Front {
        self.webhooks.store_failed(config, systems, why.clone());
        self.ops.report_sync_failure(why);
        self
    }

    /// The same front, taking pushed payments into `payments` and showing
    /// the payments (source, cursor, lag) in the sync status.
    pub fn with_payments(mut self, payments: Arc<Payments>) -> Front {
        self.payments.serve(Arc::clone(&payments));
        self.sync.show_payments(payments);
        self
    }

    /// The same front, its listener speaking TLS only.
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Front {
        self.ops.report_tls(Arc::clone(&tls));
        self.tls = Some(tls);
        self
    }

    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }
}
