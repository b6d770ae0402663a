//! Keeping other systems (CRMs, later 1C as a target) in step with the
//! directory: the systems' registrations ([`registry`]), the normalized
//! hash of what each keeps of a record ([`hash`]), the change feed from the
//! directory to each system's outbox in the sync store ([`feed`]), and how a
//! system's record is matched with the directory's ([`identity`]), and the
//! records only a CRM holds, a source named after it ([`crm_source`]), and
//! what the core does with a record a system reports ([`inbound`]), the
//! CRM-only records another source's new record is the same client as
//! ([`link`]), what a system gives the sending runtime ([`system`]), how
//! fast the runtime may call each system ([`limiter`]), how each system is
//! doing ([`health`]) and where a system's limiter and health live
//! ([`parts`]), the runtime that sends each system's outbox ([`runtime`]),
//! the webhooks' inbox and the task applying it ([`inbox`]), and a
//! system's initial load and relink ([`jobs`]), and 1C as a target, the
//! writer and the pull exchange ([`onec`]), whose [`build_systems`] is the
//! build's list of systems, and 1C's payments as events for the systems
//! that take them ([`onec::payments`]).
//!
//! The sync store (`<name>.sync.sqlite`) is opened only when a system is
//! registered: an installation that does not sync has no such file.

pub mod crm_source;
pub mod feed;
pub mod hash;
pub mod health;
pub mod identity;
pub mod inbound;
pub mod inbox;
pub mod jobs;
pub mod limiter;
pub mod link;
pub mod metrics;
pub mod onec;
pub mod parts;
pub mod registry;
#[cfg(test)]
pub(crate) mod remote_limit;
pub mod runtime;
pub mod system;

pub use feed::{Feed, FeedSettings};
pub use metrics::FeedMetrics;
pub use onec::systems as build_systems;
pub use registry::{DedupeKey, Exports, Field, Registry, RegistryError, SystemSpec};
