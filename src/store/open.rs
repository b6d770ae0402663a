//! Opening a store: the options (what the file holds, whether it may begin
//! empty), the checks made first, and the writer and reader it starts with;
//! and opening an existing store alone, for a maintenance command.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::metrics::{Holds, Metrics};
use super::schema::Schema;
use super::{private, schema, writer, DiskGate, Inner, Priority, Store, StoreError, StoreRole};

/// How [`Store::open_with_options`] opens a store: what the file holds, and
/// whether it may begin empty where a store was expected.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    role: StoreRole,
    /// The migration list, when not the role's own (the SERVIO file: a
    /// cache by role, with its ledger).
    schema: Option<Schema>,
    new_store: bool,
    companions: Vec<PathBuf>,
    gate: Option<DiskGate>,
}

impl OpenOptions {
    /// The main store: the call journal and the push and file snapshots.
    /// Its writes run at normal priority (callers wait for them).
    pub fn main() -> OpenOptions {
        OpenOptions {
            role: StoreRole::Main,
            schema: None,
            new_store: false,
            companions: Vec::new(),
            gate: None,
        }
    }

    /// A cache of `source`'s records (1C's snapshot) in a file of its own,
    /// written at the lowest priority (see [`Store::open_background`]).
    pub fn cache(source: &str) -> OpenOptions {
        OpenOptions {
            role: StoreRole::Cache {
                source: source.to_owned(),
            },
            ..OpenOptions::main()
        }
    }

    /// The sync store (`<name>.sync.sqlite`, see
    /// `gateway::sync_store_path`): the outbox of changes not yet sent to
    /// CRMs, the id links to CRM records, the CRM-only records (as snapshot
    /// rows, so [`Store::apply_changes`] and [`Store::load_snapshot`] work on
    /// it), requisites and the overlay. Its own migration list, its own
    /// writer thread at normal priority (callers wait for its commits: a
    /// webhook is answered after its inbox row is), metrics `db="sync"`.
    ///
    /// A missing file with nothing beside it is created: sync may be
    /// switched on for an install whose main store has existed for years,
    /// and a new sync store loses nothing (the reconcile queues every record
    /// whose hash is not in the id-map). An empty (0-byte) file, or a
    /// missing one with its `-wal` or `-shm` still there, is refused as
    /// [`StoreError::Missing`] unless [`OpenOptions::new_store`] allows it,
    /// as for the other stores: a sync store was there, and starting empty
    /// would forget the id links and send creates for records a CRM already
    /// has.
    pub fn sync() -> OpenOptions {
        OpenOptions {
            role: StoreRole::Sync,
            ..OpenOptions::main()
        }
    }

    /// The SERVIO snapshot (`<name>.servio.sqlite`): SERVIO's records and
    /// the ledger of the files taken (`Store::servio_file`,
    /// `Store::servio_ledger`), its own migration list; written at the
    /// lowest priority like a cache.
    pub fn servio() -> OpenOptions {
        OpenOptions {
            schema: Some(Schema::Servio),
            ..OpenOptions::cache("servio")
        }
    }

    /// Lets the store begin empty where a store was expected
    /// (`cti-gateway serve --new-store`); see [`StoreError::Missing`].
    pub fn new_store(mut self, allow: bool) -> OpenOptions {
        self.new_store = allow;
        self
    }

    /// The disk gate between the call journal and the sync store (see
    /// [`DiskGate`]): the main store marks its journal commits on it, the
    /// sync store holds its commits and checkpoints while one is marked.
    /// Give the same gate to both; other stores ignore it.
    pub fn disk_gate(mut self, gate: &DiskGate) -> OpenOptions {
        self.gate = Some(gate.clone());
        self
    }

    /// A file that exists only beside a store that was written (the 1C
    /// snapshot's file beside the main store): while it exists, a missing
    /// store file is refused as [`StoreError::Missing`].
    pub fn companion(mut self, path: impl Into<PathBuf>) -> OpenOptions {
        self.companions.push(path.into());
        self
    }
}

/// One set of the directory snapshot, as a maintenance command lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSet {
    /// The source's name (`file`, `push`, `onec`).
    pub source: String,
    /// Its rows.
    pub records: u64,
}

impl Store {
    /// Opens the main store at `path`, creating the file and its folders if
    /// needed, applying migrations and starting the writer thread. Registers
    /// the store's metrics in `registry`. Blocking; call it once at start-up.
    /// [`Store::open_with_options`] with [`OpenOptions::main`].
    pub fn open(path: &Path, registry: &prometheus::Registry) -> Result<Store, StoreError> {
        Store::open_with_options(path, registry, &OpenOptions::main())
    }

    /// [`Store::open`] for a cache of another system's records (the 1C
    /// snapshot), kept in a file of its own: its writer thread runs at the
    /// lowest priority, so that saving a large refresh never competes with
    /// SayName for the CPU, and it shares no lock with the main store's
    /// journal, which must never wait for such a thread. Replaces are diffed
    /// on that thread too. Its metrics carry `db="<name>"`.
    /// [`Store::open_with_options`] with [`OpenOptions::cache`].
    pub fn open_background(
        path: &Path,
        registry: &prometheus::Registry,
        name: &str,
    ) -> Result<Store, StoreError> {
        Store::open_with_options(path, registry, &OpenOptions::cache(name))
    }

    /// Opens the store at `path` as `options` say: creates the file and its
    /// folders if needed, applies migrations, starts the writer thread and
    /// registers the store's metrics in `registry` (`db="main"`, or the
    /// cache's source name). Blocking; call it once at start-up.
    ///
    /// A missing or empty file where a store was expected is refused with
    /// [`StoreError::Missing`] unless [`OpenOptions::new_store`] allows it:
    /// SQLite would take it as a new database, and what the store held
    /// would be gone without a word.
    pub fn open_with_options(
        path: &Path,
        registry: &prometheus::Registry,
        options: &OpenOptions,
    ) -> Result<Store, StoreError> {
        let role = &options.role;
        Store::open_checked(path, registry, options).map_err(|e| e.in_role(role))
    }

    /// Opens an existing store for a maintenance command (`cti-gateway
    /// forget-source`), which must not run beside a gateway: refuses with
    /// [`StoreError::InUse`] when another process has the file open, and
    /// with [`StoreError::Open`] when there is no store file (nothing is
    /// created). Returns the store and its snapshot's sets, by name.
    ///
    /// The check and the opening are two steps: a gateway started between
    /// them is not detected. Blocking.
    pub fn open_alone(
        path: &Path,
        registry: &prometheus::Registry,
        options: &OpenOptions,
    ) -> Result<(Store, Vec<StoredSet>), StoreError> {
        let role = &options.role;
        let sets = schema::claim_alone(path).map_err(|e| e.in_role(role))?;
        Ok((Store::open_with_options(path, registry, options)?, sets))
    }

    fn open_checked(
        path: &Path,
        registry: &prometheus::Registry,
        options: &OpenOptions,
    ) -> Result<Store, StoreError> {
        let (name, priority, schema) = match &options.role {
            StoreRole::Main => ("main", Priority::Journal, Schema::Main),
            StoreRole::Cache { source } => (source.as_str(), Priority::Background, Schema::Main),
            StoreRole::Sync => ("sync", Priority::Normal, Schema::Sync),
        };
        let schema = options.schema.unwrap_or(schema);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private::prepare_folder(dir, path).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                cause: format!("cannot create folder {} (mode 700): {e}", dir.display()),
            })?;
        }
        schema::check_presence(path, &options.role, options.new_store, &options.companions)?;
        let existed = path.exists();
        // Private whatever the umask: created 0600 before SQLite opens it
        // (its -wal and -shm files take the same mode), and files an
        // earlier version left readable by others set to 0600.
        private::create_file(path)
            .and_then(|()| private::tighten_files(path))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                cause: format!("cannot make the store's files private (mode 600): {e}"),
            })?;
        let (conn, info) = schema::open_writer(path, schema).inspect_err(|_| {
            // A file this failed first open created is empty: left there,
            // it would pass for a lost store at the next start.
            if !existed && std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
        })?;
        let reader = schema::open_reader(path)?;
        let holds = match &options.role {
            StoreRole::Main => Holds::Journal,
            StoreRole::Cache { .. } => Holds::Snapshot,
            StoreRole::Sync => Holds::Sync,
        };
        let metrics = Metrics::register(registry, name, holds)?;
        let (sender, rx) = mpsc::channel(writer::CHANNEL_CAPACITY);
        let generation = Arc::new(AtomicU64::new(0));
        let handle = writer::spawn(
            conn,
            path.to_path_buf(),
            metrics.clone(),
            Arc::clone(&generation),
            rx,
            priority,
            &options.role,
            options.gate.clone(),
        )
        .map_err(|e| {
            metrics.unregister(registry);
            StoreError::Spawn {
                cause: e.to_string(),
            }
        })?;
        tracing::info!(
            path = %path.display(),
            schema_version = info.schema_version,
            migrated_from = info.migrated_from,
            sources = info.sources,
            counterparties = info.counterparties,
            journal_last_id = info.journal_last_id,
            outbox_pending = info.outbox_pending,
            "store opened"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                sender: Mutex::new(Some(sender)),
                writer: tokio::sync::Mutex::new(Some(handle)),
                closed: AtomicBool::new(false),
                readers: Mutex::new(vec![reader]),
                untrusted: Mutex::new(HashSet::new()),
                generation,
                metrics,
                registry: registry.clone(),
                priority,
                role: options.role.clone(),
            }),
        })
    }
}
