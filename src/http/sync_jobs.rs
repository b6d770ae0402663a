//! A system's initial load and relink (issue 18 item 10), Bearer
//! `api.token` as the other sync admin endpoints:
//!
//! - `POST /api/v1/sync/{system}/initial`: every exported record with no
//!   id-map row or another hash is enqueued (the change feed's reconcile);
//! - `POST /api/v1/sync/{system}/relink`: the id-map rebuilt from the
//!   system's list, nothing created.
//!
//! Both answer 202 once started, 409 while a job of that system runs, 404
//! for a system this gateway does not run; `GET /api/v1/sync/status`
//! shows the progress (`job`). `cti-gateway sync initial|relink SYSTEM`
//! is their client. The work is `sync::jobs`'.

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{no_query, require_token};
use super::client::Client;
use super::respond::{json, json_error, with_header, Body};
use super::webhook::system_path;
use crate::config::{Config, Secret};
use crate::sync::jobs::{JobKind, SyncJobs};

/// The job endpoints, built once at start-up.
pub struct JobEndpoints {
    token: Option<Secret>,
    jobs: Option<SyncJobs>,
}

/// Whether `path` is `/api/v1/sync/{system}/initial` or `.../relink`.
pub fn is_job(path: &str) -> bool {
    system_path(path)
        .is_some_and(|p| p.segment.is_none() && matches!(p.action, "initial" | "relink"))
}

impl JobEndpoints {
    pub fn new(config: &Config) -> JobEndpoints {
        JobEndpoints {
            token: config.api.token.clone(),
            jobs: None,
        }
    }

    pub fn serve(&mut self, jobs: SyncJobs) {
        self.jobs = Some(jobs);
    }

    /// `POST /api/v1/sync/{system}/initial|relink`.
    pub async fn start(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            let message = format!(
                "method {} is not allowed here: POST starts the job",
                req.method()
            );
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return with_header(refused, header::ALLOW, "POST");
        }
        if let Err(refused) = require_token(self.token.as_ref(), req, client) {
            return refused;
        }
        if let Err(refused) = no_query(req, client.request) {
            return refused;
        }
        let Some(p) = system_path(req.uri().path()) else {
            return json_error(StatusCode::NOT_FOUND, "no such endpoint");
        };
        let kind = match p.action {
            "initial" => JobKind::Initial,
            _ => JobKind::Relink,
        };
        let Some(jobs) = &self.jobs else {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "unknown system {:?}: this gateway runs no sync system",
                    p.system
                ),
            );
        };
        match jobs.start(p.system, kind) {
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "unknown system {:?}: this gateway runs no such sync system",
                    p.system
                ),
            ),
            Some(Err(busy)) => json_error(StatusCode::CONFLICT, &busy.to_string()),
            Some(Ok(())) => json(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "system": p.system,
                    "job": kind.as_str(),
                    "state": "running",
                }),
            ),
        }
    }
}
