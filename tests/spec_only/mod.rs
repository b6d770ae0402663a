//! A [`System`] that is only its registration: for the tests of the sync
//! foundation (the change feed, the inbound policy, CRM-only records),
//! which look at what is queued and must not see it sent. Its remote calls
//! never finish, so the runtime's worker holds what it took in flight and
//! leaves the outbox as the feed wrote it (a row is deleted only once
//! confirmed). Not a product stub: a test's stand-in, kept with the tests.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::Arc;

use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::SystemSpec;

pub struct SpecOnly(pub SystemSpec);

/// Each spec as a system whose remote never answers.
pub fn systems(specs: Vec<SystemSpec>) -> Vec<Arc<dyn System>> {
    specs
        .into_iter()
        .map(|spec| Arc::new(SpecOnly(spec)) as Arc<dyn System>)
        .collect()
}

/// The `[sync.<name>]` tables that start `specs`.
pub fn tables(specs: &[SystemSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("\n[sync.{}]\n", s.name()))
        .collect()
}

impl System for SpecOnly {
    fn spec(&self) -> &SystemSpec {
        &self.0
    }

    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 1,
            per_second: 1.0,
        }
    }

    fn batch_size(&self) -> usize {
        1
    }

    fn send<'a>(&'a self, _rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(std::future::pending())
    }

    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(std::future::pending())
    }

    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }

    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Err(WebhookError {
            what: "this test system takes no webhooks".into(),
        })
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(std::future::pending())
    }
}
