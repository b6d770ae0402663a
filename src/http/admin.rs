//! The admin endpoint, Bearer `api.token`: `POST /api/v1/admin/accept-file`
//! makes the file source take the directory file as it is now, once, past
//! the guard that refuses an empty file or one removing more than
//! `directory.max_shrink` of its records. `cti-gateway accept-file` is its
//! command-line client. SIGHUP never does this: logrotate and `systemctl
//! reload` send it routinely.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{no_query, require_token};
use super::client::Client;
use super::respond::{json, json_error, with_header, Body};
use crate::config::{Config, Secret};
use crate::directory::Directory;
use crate::sources::file::{FileError, FileSource};

/// `POST` here accepts the directory file.
pub const ACCEPT_FILE: &str = "/api/v1/admin/accept-file";

/// The admin endpoints, built once at start-up.
pub struct Admin {
    token: Option<Secret>,
    /// The file source, with `directory.file`.
    file: Option<Arc<FileSource>>,
    directory: Arc<Directory>,
}

impl Admin {
    pub fn new(config: &Config, file: Option<Arc<FileSource>>, directory: Arc<Directory>) -> Admin {
        Admin {
            token: config.api.token.clone(),
            file,
            directory,
        }
    }

    /// `POST /api/v1/admin/accept-file` (no body): 200 with what was loaded;
    /// 409 when there is no file source or the file cannot be read, 422 when
    /// it is not valid (the line named), 503 while the gateway starts. The
    /// directory is unchanged whenever the answer is not 200.
    pub async fn accept_file(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            let message = format!(
                "method {} is not allowed here: POST {ACCEPT_FILE} (no body) makes the file source take the directory file as it is",
                req.method()
            );
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return with_header(refused, header::ALLOW, "POST");
        }
        if let Err(refused) = require_token(self.token.as_ref(), &req, client) {
            return refused;
        }
        if let Err(refused) = no_query(&req) {
            return refused;
        }
        let Some(file) = &self.file else {
            return json_error(
                StatusCode::CONFLICT,
                "no directory.file is configured: there is no file to accept",
            );
        };
        tracing::info!(path = %file.path().display(), "accept-file: taking the directory file as it is, past the guard");
        match file.accept().await {
            Ok(loaded) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "accepted": true,
                    "changed": loaded.report.is_some(),
                    "path": file.path().display().to_string(),
                    "previous_records": loaded.previous,
                    "records": loaded.records,
                    "counterparties": self.directory.snapshot().len(),
                }),
            ),
            Err(e) => not_accepted(&e),
        }
    }
}

/// Why the file was not taken, in JSON, with the status that says whose
/// move it is: 422 fix the file, 409 the file is not there (or is being
/// written), 503 try again.
fn not_accepted(e: &FileError) -> Response<Body> {
    let status = match e {
        FileError::Line { .. } | FileError::TooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        FileError::Io { .. } | FileError::ChangedWhileRead { .. } | FileError::Refused(_) => {
            StatusCode::CONFLICT
        }
        FileError::Starting => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = format!("{e}; nothing was changed");
    let refused = json(
        status,
        &serde_json::json!({ "accepted": false, "error": message }),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return with_header(refused, header::RETRY_AFTER, "5");
    }
    refused
}
