//! The admin endpoints, Bearer `api.token`:
//!
//! - `POST /api/v1/admin/accept-file` makes the file source take the
//!   directory file as it is now, once, past the guard that refuses an empty
//!   file or one removing more than `directory.max_shrink` of its records.
//!   `cti-gateway accept-file` is its command-line client. SIGHUP never does
//!   this: logrotate and `systemctl reload` send it routinely.
//! - `POST /api/v1/admin/backup` with `{"to": "/absolute/folder"}` copies
//!   every store file the gateway holds into that folder, live (SQLite's
//!   online backup API, see `store::backup`). `cti-gateway backup --to DIR`
//!   is its command-line client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{no_query, require_token};
use super::body;
use super::client::Client;
use super::respond::{json, json_error, with_header, Body};
use crate::config::{Config, Secret};
use crate::directory::Directory;
use crate::sources::file::{FileError, FileSource};
use crate::store::{BackupError, Store};

/// `POST` here accepts the directory file.
pub const ACCEPT_FILE: &str = "/api/v1/admin/accept-file";

/// `POST` here (`{"to": "/absolute/folder"}`) backs the stores up.
pub const BACKUP: &str = "/api/v1/admin/backup";

/// The largest backup request body: one path.
const MAX_BACKUP_BODY: usize = 8 * 1024;

/// The admin endpoints, built once at start-up.
pub struct Admin {
    token: Option<Secret>,
    /// The file source, with `directory.file`.
    file: Option<Arc<FileSource>>,
    directory: Arc<Directory>,
    /// Every store file the gateway holds, the main store first.
    stores: Vec<Store>,
    body_read_timeout: Duration,
    /// Held while a backup runs: one at a time.
    backing_up: tokio::sync::Mutex<()>,
}

impl Admin {
    /// What every admin endpoint checks first: `POST` (else 405 with
    /// `usage`), the Bearer `api.token`, no query string.
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn admin_request(
        &self,
        req: &Request<Incoming>,
        client: Client,
        usage: &str,
    ) -> Result<(), Response<Body>> {
        if req.method() != Method::POST {
            let message = format!("method {} is not allowed here: {usage}", req.method());
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return Err(with_header(refused, header::ALLOW, "POST"));
        }
        require_token(self.token.as_ref(), req, client)?;
        no_query(req, client.request)
    }

    pub fn new(
        config: &Config,
        file: Option<Arc<FileSource>>,
        directory: Arc<Directory>,
        store: Store,
    ) -> Admin {
        Admin {
            token: config.api.token.clone(),
            file,
            directory,
            stores: vec![store],
            body_read_timeout: config.server.body_read_timeout,
            backing_up: tokio::sync::Mutex::new(()),
        }
    }

    /// One more store file for backups to copy (1C's snapshot).
    pub fn backing_up_too(&mut self, store: Store) {
        self.stores.push(store);
    }

    /// `POST /api/v1/admin/backup` with `{"to": "/absolute/folder"}`: copies
    /// every store file into the folder under its own name, and answers 200
    /// with the files written. 400 for a request that is wrong (no or a
    /// relative path), 409 for a folder that cannot take the copies
    /// (missing, not writable, the store's own) or while another backup
    /// runs, 500 when a copy failed part-way (no partial file is left).
    pub async fn backup(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        let usage = format!(
            "POST {BACKUP} with {{\"to\": \"/absolute/folder\"}} copies the store files there"
        );
        if let Err(refused) = self.admin_request(&req, client, &usage) {
            return refused;
        }
        let raw = match body::read(req, MAX_BACKUP_BODY, self.body_read_timeout).await {
            Ok(raw) => raw,
            Err(e) => return json_error(e.status(), &format!("{e}; no backup was made")),
        };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BackupRequest {
            to: PathBuf,
        }
        let to = match serde_json::from_slice::<BackupRequest>(&raw) {
            Ok(request) => request.to,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                    "the body must be {{\"to\": \"/absolute/folder\"}} ({e}); no backup was made"
                ),
                )
            }
        };
        let Ok(_running) = self.backing_up.try_lock() else {
            return json_error(
                StatusCode::CONFLICT,
                "a backup is running already; wait for it to finish",
            );
        };
        let dir = match crate::store::check_backup_target(&to, &self.stores) {
            Ok(dir) => dir,
            Err(e) => return backup_refused(&e),
        };
        let request_id = client.request;
        tracing::info!(to = %dir.display(), stores = self.stores.len(), %request_id, "backup: copying the store files");
        let mut files = Vec::with_capacity(self.stores.len());
        for store in &self.stores {
            match store.backup_into(&dir).await {
                Ok(file) => {
                    tracing::info!(
                        source = %file.source.display(),
                        copy = %file.path.display(),
                        bytes = file.bytes,
                        elapsed_ms = file.elapsed.as_millis() as u64,
                        %request_id,
                        "backup: store file copied"
                    );
                    files.push(serde_json::json!({
                        "source": file.source.display().to_string(),
                        "path": file.path.display().to_string(),
                        "bytes": file.bytes,
                        "elapsed_ms": file.elapsed.as_millis() as u64,
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %request_id, "backup failed");
                    return backup_refused(&e);
                }
            }
        }
        json(
            StatusCode::OK,
            &serde_json::json!({ "to": dir.display().to_string(), "files": files }),
        )
    }

    /// `POST /api/v1/admin/accept-file` (no body): 200 with what was loaded;
    /// 409 when there is no file source or the file cannot be read, 422 when
    /// it is not valid (the line named), 503 while the gateway starts. The
    /// directory is unchanged whenever the answer is not 200.
    pub async fn accept_file(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        let usage = format!(
            "POST {ACCEPT_FILE} (no body) makes the file source take the directory file as it is"
        );
        if let Err(refused) = self.admin_request(&req, client, &usage) {
            return refused;
        }
        let Some(file) = &self.file else {
            return json_error(
                StatusCode::CONFLICT,
                "no directory.file is configured: there is no file to accept",
            );
        };
        tracing::info!(path = %file.path().display(), request_id = %client.request, "accept-file: taking the directory file as it is, past the guard");
        match file.accept(client.request).await {
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

/// Why no backup was made, with whose move it is: 400 the request, 409 the
/// folder, 500 the copy.
fn backup_refused(e: &BackupError) -> Response<Body> {
    let status = match e {
        BackupError::BadTarget(_) => StatusCode::BAD_REQUEST,
        BackupError::Unusable(_) => StatusCode::CONFLICT,
        BackupError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, &format!("{e}; no backup was made"))
}
