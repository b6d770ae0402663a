//! `cti-gateway serve [--config FILE] [--listen ADDR] [--new-store]`,
//! `check-config`, `forget-source NAME`, `accept-file` (the client of the
//! admin endpoint that makes a running gateway take its directory file past
//! the guard) and `backup --to DIR` (the client of the one that copies its
//! store files, live): the command line around [`Gateway`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cti_gateway::config::{self, Config, LogFormat};
use cti_gateway::gateway::onec_store_path;
use cti_gateway::sources::onec;
use cti_gateway::store::{OpenOptions, Store, StoredSet};
use cti_gateway::Gateway;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cti-gateway",
    version,
    about = "CTI gateway between the Mobilon virtual PBX, 1C and operator screens"
)]
struct Cli {
    /// On a fatal error, also print its debug form (with a backtrace when
    /// RUST_BACKTRACE or RUST_LIB_BACKTRACE asks for one). `RUST_LOG=debug`
    /// does the same.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the PBX's SOAP requests, operator screens and metrics.
    Serve {
        /// TOML configuration (see config/example.toml). Without it the
        /// gateway starts in demo mode on 127.0.0.1:8080 with the demo directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this address instead of `server.listen` (demo mode:
        /// instead of 127.0.0.1:8080), e.g. 127.0.0.1:9000.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Begin with an empty store where the files show that a store was
        /// there (its file missing or empty): for one start, once you know
        /// what it held is lost. Without it such a start is refused.
        #[arg(long)]
        new_store: bool,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Drop one source's snapshot set from the store, with the gateway
    /// stopped (a start-up warning names each set whose source is not
    /// configured). Prints how many rows were removed.
    ForgetSource {
        /// The set: `file`, `push` or `onec`.
        name: String,
        /// The gateway's configuration (its `store.path`); without it, demo
        /// mode's store.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make the running gateway take its directory file as it is now, once:
    /// also an empty file, or one that removes more than
    /// directory.max_shrink of the file's records (which it refuses on its
    /// own). Prints the gateway's answer; exits 1 when it did not take it.
    AcceptFile {
        /// The gateway's configuration, for `server.listen` and `api.token`
        /// (without it: demo mode's).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The gateway's address instead of `server.listen`, e.g.
        /// http://127.0.0.1:8080 (plain HTTP).
        #[arg(long)]
        url: Option<String>,
    },
    /// Make the running gateway copy every store file it holds (the call
    /// journal and the snapshots) into DIR, live and consistent. Prints the
    /// files written; exits 1 with the gateway's message when it made none.
    Backup {
        /// The folder for the copies: existing, writable by the gateway's
        /// user, not the store's own folder (another disk, ideally).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The gateway's configuration, for `server.listen` and `api.token`
        /// (without it: demo mode's).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The gateway's address instead of `server.listen`, e.g.
        /// http://127.0.0.1:8080 (plain HTTP).
        #[arg(long)]
        url: Option<String>,
    },
    /// Ask the running gateway whether it is ready (`GET /readyz`): exits 0
    /// when it answers 200 (a directory is loaded), 1 otherwise, printing
    /// why. For a container's HEALTHCHECK, whose minimal base has no curl.
    Healthcheck {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Ask the running gateway about CRM sync: the outbox, its dead rows,
    /// conflicts and the id links (the sync API under /api/v1/sync, with
    /// api.token). Prints the gateway's answer; exits 1 with its message.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
}

/// Where a command that asks the running gateway sends its request.
#[derive(clap::Args)]
struct GatewayArgs {
    /// The gateway's configuration, for `server.listen` and `api.token`
    /// (CTI_API_TOKEN also gives it; without a file: demo mode's).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway's address instead of `server.listen`, e.g.
    /// http://127.0.0.1:8080 (plain HTTP).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Per system: rows waiting to be sent, the oldest one's age, dead rows.
    Status {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Outbox rows in id order, a page at a time (the answer's next_after
    /// is the --after of the next page).
    Outbox {
        /// Only this system's rows.
        #[arg(long)]
        system: Option<String>,
        /// Only rows in this state: pending, dead, or done (confirmed rows by
        /// their write outcomes, for a system that reports them).
        #[arg(long)]
        state: Option<String>,
        /// Only rows after this id.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many rows (1 to 1000; 100 unless given).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Make dead outbox row ID pending again (attempts 0, sent at once).
    Retry {
        id: i64,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Fields a CRM and the gateway disagreed on, in the order recorded.
    Conflicts {
        /// Only this system's conflicts.
        #[arg(long)]
        system: Option<String>,
        /// Only those recorded from this time on (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1 to 1000; 100 unless given).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Queue every exported record SYSTEM lacks (no id link, or another
    /// version): its initial load. Answers once started; `sync status`
    /// shows its progress.
    Initial {
        system: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Rebuild SYSTEM's id links from its own list (by the external id the
    /// gateway wrote there, then the INN/KPP), creating nothing. Answers
    /// once started; `sync status` shows its progress.
    Relink {
        system: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Resume sending to SYSTEM now, after it blocked the gateway (instead
    /// of waiting for the next probe).
    Resume {
        system: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// A system's id links as CSV, on standard output.
    ExportMap {
        /// The system whose links to export.
        #[arg(long)]
        system: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

impl SyncCommand {
    fn gateway(&self) -> &GatewayArgs {
        match self {
            SyncCommand::Status { gateway }
            | SyncCommand::Outbox { gateway, .. }
            | SyncCommand::Retry { gateway, .. }
            | SyncCommand::Conflicts { gateway, .. }
            | SyncCommand::Initial { gateway, .. }
            | SyncCommand::Relink { gateway, .. }
            | SyncCommand::Resume { gateway, .. }
            | SyncCommand::ExportMap { gateway, .. } => gateway,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose
        || std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
    let config_file = match &cli.command {
        Command::Serve { config, .. }
        | Command::ForgetSource { config, .. }
        | Command::AcceptFile { config, .. }
        | Command::Backup { config, .. } => config.clone(),
        Command::CheckConfig { config } => Some(config.clone()),
        Command::Sync { command } => command.gateway().config.clone(),
        Command::Healthcheck { gateway } => gateway.config.clone(),
    };
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            report_fatal(&error, verbose, config_file.as_deref());
            std::process::ExitCode::FAILURE
        }
    }
}

/// A fatal error as an admin reads it: its message and each cause once, on
/// one line, never a stack trace (whatever `RUST_BACKTRACE` says) unless
/// `verbose`. Through the log when logging is set up (so `log.format =
/// "json"` makes it a JSON line); before that, in the format the config file
/// asks for if it can be read that far.
fn report_fatal(error: &anyhow::Error, verbose: bool, config_file: Option<&Path>) {
    let message = error_chain(error);
    if !tracing::dispatcher::has_been_set() {
        let format = config_file
            .and_then(config::peek_log_format)
            .unwrap_or(LogFormat::Text);
        if format == LogFormat::Json {
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(std::io::stderr);
            builder.json().flatten_event(true).init();
        } else {
            eprintln!("error: {message}");
            if verbose {
                eprintln!("{error:?}");
            }
            return;
        }
    }
    if !tracing::enabled!(tracing::Level::ERROR) {
        // `log.level = "off"`: a fatal error is still said.
        eprintln!("error: {message}");
        return;
    }
    if verbose {
        tracing::error!(details = ?error, "{message}");
    } else {
        tracing::error!("{message}");
    }
}

/// `error` and its causes joined by ": ", leaving out a cause whose text the
/// message before it already holds (`cannot read X: No such file or
/// directory (os error 2)` is not followed by the io error again).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(text.trim()) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text.trim());
    }
    message
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { config } => check_config(&config),
        Command::AcceptFile { config, url } => accept_file(config, url.as_deref()),
        Command::Backup { to, config, url } => backup(&to, config, url.as_deref()),
        Command::Sync { command } => sync(command),
        Command::Healthcheck { gateway } => healthcheck(gateway),
        Command::Serve {
            config,
            listen,
            new_store,
        } => {
            // Signals first: a SIGHUP (logrotate, `systemctl reload`) or a
            // SIGTERM in the first moments must not kill the gateway with
            // the default action while its directory loads.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let signals = {
                let _inside = runtime.enter();
                Signals::install()
            };
            let (mut config, demo) = match config {
                Some(path) => (Config::load(&path, &config::process_env)?, false),
                None => (demo_config()?, true),
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
                if demo && !listen.ip().is_loopback() {
                    anyhow::bail!(
                        "demo mode uses published credentials, so it listens on a loopback address only (not {listen}): give --config with secrets of your own to listen on other addresses"
                    );
                }
                // The loaded file was checked for its own server.listen.
                config.check_secrets()?;
            }
            config.store.new_store = new_store;
            init_logging(&config, &config.log.level);
            if let Some(path) = &config.source {
                warn_if_readable_by_others(path);
            }
            signals.log_problems();
            log_features_off(&config);
            runtime.block_on(serve(config, demo, signals))
        }
        Command::ForgetSource { name, config } => {
            let config = match config {
                Some(path) => Config::load(&path, &config::process_env)?,
                None => Config::demo(
                    &config::process_env,
                    &config::demo_folder(&config::process_env),
                ),
            };
            // The store's own start and stop lines would only be noise here.
            init_logging(&config, "warn");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(forget_source(&config, &name))
        }
    }
}

/// `check-config`: the file loads, its routes fit, and the files it names
/// can be used: the directory file exists and is readable, the store's
/// folder is writable (or can be created). Each problem is named; all of
/// them are listed before it fails.
fn check_config(path: &Path) -> anyhow::Result<()> {
    let loaded = Config::load(path, &config::process_env)?;
    // The same check `serve` makes at start: routes are the front's.
    cti_gateway::http::check_soap_path(&loaded)?;
    // As `serve` does with this build's sync systems.
    let systems = cti_gateway::sync::build_systems(&loaded);
    let names: Vec<&str> = systems.iter().map(|s| s.spec().name()).collect();
    loaded.check_sync_tables(&names)?;
    // As `serve` does: a bad SERVIO mapping names its key and file.
    if let Some(servio) = &loaded.servio {
        cti_gateway::sources::servio::Mapping::load(&servio.mapping)?;
    }
    let mut problems = Vec::new();
    if let Some(file) = &loaded.directory.file {
        if let Err(e) = std::fs::File::open(file) {
            problems.push(format!(
                "`directory.file` {} cannot be read: {e}",
                file.display()
            ));
        }
    }
    if let Err(problem) = store_folder_writable(&loaded.store.path) {
        problems.push(problem);
    }
    for (key, file) in [
        ("server.tls_cert", &loaded.server.tls_cert),
        ("server.tls_key", &loaded.server.tls_key),
    ] {
        if let Some(file) = file {
            if let Err(e) = std::fs::File::open(file) {
                problems.push(format!("`{key}` {} cannot be read: {e}", file.display()));
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}: {}", path.display(), problems.join("; "));
    }
    println!("{}: OK", path.display());
    for line in features_off(&loaded) {
        println!("note: {line}");
    }
    Ok(())
}

/// Whether the store at `store` could be created or written: its folder, or
/// the nearest folder above it that exists (the gateway creates the rest),
/// must be a writable folder. Checked by the permission bits the process
/// has (access(2)), so nothing is created.
fn store_folder_writable(store: &Path) -> Result<(), String> {
    let folder = store
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = folder
        .ancestors()
        .find(|p| p.as_os_str().is_empty() || p.exists())
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!(
            "`store.path` {}: {} is not a folder",
            store.display(),
            existing.display()
        ));
    }
    let c_path =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(existing.as_os_str()))
            .map_err(|_| format!("`store.path` {} holds a NUL byte", store.display()))?;
    // SAFETY: access reads a NUL-terminated path we own for the call's length.
    let writable = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if writable {
        Ok(())
    } else {
        Err(format!(
            "`store.path` {}: the folder {} is not writable by this user: {}",
            store.display(),
            existing.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// One sentence per feature this configuration leaves off, with the reason:
/// what an admin would otherwise learn only from a 401 or a silent screen.
fn features_off(config: &Config) -> Vec<String> {
    let mut off = Vec::new();
    if config.api.token.is_none() {
        off.push(format!(
            "push API, call journal and admin endpoints off: api.token is not set (nor {})",
            config::ENV_API_TOKEN
        ));
    }
    if config.operators.is_empty() {
        off.push(
            "operator screens off: no [[operator]] in the config, so IncomingCall reaches no screen"
                .to_owned(),
        );
    }
    if config.directory.file.is_none() {
        off.push("directory file off: directory.file is not set ([onec] only)".to_owned());
    } else if config.directory.watch_interval.is_zero() {
        off.push(
            "directory file watching off: directory.watch_interval is 0s (SIGHUP still reloads)"
                .to_owned(),
        );
    }
    if config.onec.is_none() {
        off.push("1C source off: no [onec] section".to_owned());
    }
    if let Some(why) = cti_gateway::sync::onec::writer_off(config) {
        off.push(why);
    }
    if let Some(servio) = &config.servio {
        if servio.poll.is_zero() {
            off.push(
                "SERVIO folder polling off: servio.poll is 0s (SIGHUP still scans)".to_owned(),
            );
        }
    }
    off
}

/// Logs [`features_off`], one line each.
fn log_features_off(config: &Config) {
    for line in features_off(config) {
        tracing::info!("{line}");
    }
}

/// Demo mode's configuration, with its folder made and the demo directory
/// (compiled in) written there on first start; a demo file already there is
/// kept, so edits to it survive a restart.
fn demo_config() -> anyhow::Result<Config> {
    let folder = config::demo_folder(&config::process_env);
    // The owner's only, as the store wants its folder (it holds the store).
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(builder.recursive(true), 0o700);
    builder.create(&folder).with_context(|| {
        format!(
            "cannot create the demo folder {} (set {} to another one)",
            folder.display(),
            config::ENV_DEMO_DIR
        )
    })?;
    let file = folder.join(config::DEMO_DIRECTORY_FILE);
    if !file.exists() {
        std::fs::write(&file, config::DEMO_COUNTERPARTIES)
            .with_context(|| format!("cannot write the demo directory {}", file.display()))?;
        // Dated back past `directory.settle`: a file just written counts as
        // one still being written, and the first start would wait for it.
        let written_before = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        if let Ok(f) = std::fs::File::options().write(true).open(&file) {
            let _ = f.set_modified(written_before);
        }
    }
    Ok(Config::demo(&config::process_env, &folder))
}

/// Logs to stderr in the configured format, at `RUST_LOG`'s level if set,
/// else at `level`.
fn init_logging(config: &Config, level: &str) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // rustls warns once per handshake of a client that sends an IP address
    // as its server name (wrk does, a PBX dialling an address may): a line
    // per connection. Its errors still show, failed handshakes are counted
    // (cti_tls_handshake_failures_total), and a filter naming rustls wins.
    let named = |spec: &str| spec.contains("rustls");
    if !named(level) && !std::env::var("RUST_LOG").is_ok_and(|v| named(&v)) {
        if let Ok(quiet) = "rustls=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal, never in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// A config file holds the SOAP password and tokens: say so when others can read it.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "config file is readable by other users and holds secrets; run: chmod 600 {}",
                    path.display()
                );
            }
        }
    }
}

async fn serve(config: Config, demo: bool, mut signals: Signals) -> anyhow::Result<()> {
    let soap_path = config.soap.path.clone();
    let username = config.soap.username.clone();
    let start = Gateway::start(config.clone());
    tokio::pin!(start);
    let gateway = tokio::select! {
        gateway = &mut start => gateway?,
        () = signals.stopped() => {
            // Nothing was served yet: no request to finish.
            tracing::info!("stop signal during start-up: exiting before serving");
            return Ok(());
        }
    };
    let addr = gateway.local_addr();
    let report = gateway.start_report();
    tracing::info!(
        counterparties = report.counterparties,
        from_snapshot = report.snapshot_records,
        ready_ms = report.ready_after.as_millis() as u64,
        "directory ready"
    );
    // Under systemd's Type=notify the unit counts as started only now:
    // the directory is loaded and the PBX is answered.
    cti_gateway::systemd::notify_logged(&format!(
        "READY=1\nSTATUS=serving, {} counterparties loaded",
        report.counterparties
    ));
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "cti-gateway listening on {scheme}://{addr}{soap_path} ({} counterparties loaded)",
        report.counterparties
    );
    if demo {
        let shown = |file: &Option<PathBuf>| {
            file.as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        };
        println!(
            "demo mode: no --config given; directory {} (edit it: it is reloaded), store {}",
            shown(&config.directory.file),
            config.store.path.display()
        );
        // A value taken from the environment is not printed: it is not a demo value.
        let demo_or_env = |name: &str, demo: &str| {
            if std::env::var_os(name).is_some() {
                format!("from {name}")
            } else {
                demo.to_owned()
            }
        };
        println!(
            "  SOAP Basic credentials (demo): {} / {}",
            config.soap.username,
            demo_or_env(config::ENV_SOAP_PASSWORD, config::DEMO_SOAP_PASSWORD)
        );
        println!(
            "  operator screen: key {} token {} (demo)",
            config::DEMO_OPERATOR_KEY,
            config::DEMO_OPERATOR_TOKEN
        );
        println!(
            "  push API Bearer token (demo): {}",
            demo_or_env(config::ENV_API_TOKEN, config::DEMO_API_TOKEN)
        );
        println!("  these are published demo values: use --config with your own before exposing the gateway");
    } else {
        let from_env = std::env::var_os(config::ENV_SOAP_PASSWORD).is_some();
        println!(
            "SOAP Basic credentials: user '{username}', password from {}",
            if from_env {
                config::ENV_SOAP_PASSWORD
            } else {
                "the config file"
            }
        );
    }

    let hangups = signals.reload_on_hangup(&gateway);
    signals.stopped().await;
    tracing::info!("shutting down: finishing requests in flight");
    cti_gateway::systemd::notify_logged("STOPPING=1\nSTATUS=finishing requests in flight");
    if let Some(task) = hangups {
        task.abort();
    }
    gateway.shutdown().await;
    Ok(())
}

/// `forget-source NAME`: removes the snapshot set `name` from the store
/// `config` names, and from 1C's snapshot file beside it; that file, which
/// holds nothing else, is deleted once it holds no set. Refuses while a
/// gateway has either file open, and refuses a name no store holds, listing
/// the ones they hold.
async fn forget_source(config: &Config, name: &str) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let main_path = config.store.path.clone();
    let onec_path = onec_store_path(&main_path);
    let mut stores = vec![open_alone(&main_path, &registry, OpenOptions::main())?];
    if onec_path.exists() {
        stores.push(open_alone(
            &onec_path,
            &registry,
            OpenOptions::cache(onec::SOURCE),
        )?);
    }
    let result = forget_in(&stores, name).await;
    for (store, _, _) in &stores {
        store.close().await;
    }
    result?;
    // 1C's file held this set and no other: nothing is left in it.
    let onec_emptied = stores.iter().any(|(_, path, sets)| {
        *path == onec_path
            && sets.iter().any(|s| s.source == name)
            && sets.iter().all(|s| s.source == name)
    });
    if onec_emptied {
        for file in [
            onec_path.clone(),
            sibling(&onec_path, "-wal"),
            sibling(&onec_path, "-shm"),
        ] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot delete {}: {e}", file.display()),
            }
        }
        println!(
            "deleted {}: it held only 1C's snapshot, now empty",
            onec_path.display()
        );
    }
    Ok(())
}

/// A store opened alone, with its path and the sets it held.
type Opened = (Store, PathBuf, Vec<StoredSet>);

fn open_alone(
    path: &Path,
    registry: &prometheus::Registry,
    options: OpenOptions,
) -> anyhow::Result<Opened> {
    let (store, sets) = Store::open_alone(path, registry, &options)
        .with_context(|| format!("forget-source works on the store at {}", path.display()))?;
    Ok((store, path.to_path_buf(), sets))
}

/// Removes `name`'s set from each store that holds it, saying how many rows
/// each lost; an error naming the sets they hold when none holds it.
async fn forget_in(stores: &[Opened], name: &str) -> anyhow::Result<()> {
    let holding: Vec<_> = stores
        .iter()
        .filter(|(_, _, sets)| sets.iter().any(|s| s.source == name))
        .collect();
    if holding.is_empty() {
        let held: Vec<String> = stores
            .iter()
            .flat_map(|(_, path, sets)| {
                sets.iter().map(move |s| {
                    format!("{} ({}, in {})", s.source, rows(s.records), path.display())
                })
            })
            .collect();
        let held = if held.is_empty() {
            "none".to_owned()
        } else {
            held.join(", ")
        };
        anyhow::bail!("there is no snapshot set named `{name}`; the snapshot holds: {held}");
    }
    for (store, path, _) in holding {
        let removed = store
            .forget_source(name)
            .await
            .with_context(|| format!("removing `{name}` from {}", path.display()))?;
        println!(
            "removed {} of the `{name}` snapshot set from {}",
            rows(removed as u64),
            path.display()
        );
    }
    Ok(())
}

/// "1 row", "3 rows".
fn rows(n: u64) -> String {
    if n == 1 {
        "1 row".to_owned()
    } else {
        format!("{n} rows")
    }
}

/// `path` with `suffix` appended to its file name (`x.sqlite-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The signals `serve` answers, installed before anything else is done so
/// that none of them finds the default action (which ends the process: exit
/// 129 on SIGHUP, with no log line). A SIGHUP that arrives while the gateway
/// starts is kept by its stream and becomes one reload once it is ready.
struct Signals {
    hangup: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    /// What could not be installed, logged once logging is set up.
    problems: Vec<String>,
}

impl Signals {
    /// Must run inside the runtime's context (`Runtime::enter`).
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let mut problems = Vec::new();
        let mut install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("cannot listen for {name}: {e}"));
                None
            }
        };
        let hangup = install(SignalKind::hangup(), "SIGHUP (reload)");
        let terminate = install(SignalKind::terminate(), "SIGTERM");
        let interrupt = install(SignalKind::interrupt(), "SIGINT");
        Signals {
            hangup,
            terminate,
            interrupt,
            problems,
        }
    }

    fn log_problems(&self) {
        for problem in &self.problems {
            tracing::error!("{problem}");
        }
    }

    /// Until SIGTERM or SIGINT (Ctrl-C).
    async fn stopped(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.terminate) => {},
            () = next(&mut self.interrupt) => {},
        }
    }

    /// Each SIGHUP from now on (and one that came during start-up) reloads
    /// the sources and the TLS certificate.
    fn reload_on_hangup(&mut self, gateway: &Gateway) -> Option<tokio::task::JoinHandle<()>> {
        let mut hup = self.hangup.take()?;
        let reload = gateway.reload_handle();
        Some(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                reload.send_modify(|generation| *generation += 1);
            }
        }))
    }
}

/// The gateway an admin command talks to (the configuration's listen
/// address, or `url`) and the `api.token` it needs.
fn admin_target(config: Option<PathBuf>, url: Option<&str>) -> anyhow::Result<(Target, String)> {
    let config = match config {
        Some(path) => Config::load(&path, &config::process_env)?,
        None => Config::demo(
            &config::process_env,
            &config::demo_folder(&config::process_env),
        ),
    };
    let token = config.api.token.as_ref().context(format!(
        "no api.token in the configuration (nor {}): the admin endpoint needs it",
        config::ENV_API_TOKEN
    ))?;
    let target = match url {
        Some(url) => Target::from_url(url)?,
        None => Target::listening_on(config.server.listen),
    };
    Ok((target, token.expose().to_owned()))
}

/// `healthcheck`: `GET /readyz` of the gateway the configuration describes
/// (or `--url`); no token (the endpoint is open, as load balancers probe
/// it). Ok only for a 200.
fn healthcheck(args: GatewayArgs) -> anyhow::Result<()> {
    let target = match (&args.url, args.config) {
        (Some(url), _) => Target::from_url(url)?,
        (None, Some(path)) => {
            let config = Config::load(&path, &config::process_env)?;
            anyhow::ensure!(
                config.server.tls_cert.is_none(),
                "the gateway at {} speaks HTTPS only (server.tls_cert is set) and healthcheck speaks plain HTTP: give --url of a plain-HTTP address that reaches it, or probe /readyz with an HTTPS client",
                config.server.listen
            );
            Target::listening_on(config.server.listen)
        }
        (None, None) => Target::listening_on(
            Config::demo(
                &config::process_env,
                &config::demo_folder(&config::process_env),
            )
            .server
            .listen,
        ),
    };
    let (status, body) = target.request("GET", cti_gateway::http::READYZ, None, None)?;
    anyhow::ensure!(
        status == 200,
        "the gateway at {} is not ready: /readyz answered {status}: {}",
        target.host,
        body.trim()
    );
    println!("ready");
    Ok(())
}

/// `accept-file`: `POST /api/v1/admin/accept-file` to the gateway the
/// configuration describes (or `url`), with its `api.token`.
fn accept_file(config: Option<PathBuf>, url: Option<&str>) -> anyhow::Result<()> {
    let (target, token) = admin_target(config, url)?;
    let (status, body) = target.post(cti_gateway::http::ACCEPT_FILE, &token, None)?;
    println!("{}", body.trim_end());
    anyhow::ensure!(
        (200..300).contains(&status),
        "the gateway answered {status}: the directory file was not taken"
    );
    Ok(())
}

/// `backup`: `POST /api/v1/admin/backup` with `{"to": DIR}` (made absolute
/// here: the gateway's working directory is not ours).
fn backup(to: &Path, config: Option<PathBuf>, url: Option<&str>) -> anyhow::Result<()> {
    let dir = std::path::absolute(to)
        .with_context(|| format!("cannot make {} an absolute path", to.display()))?;
    let (target, token) = admin_target(config, url)?;
    let request = serde_json::json!({ "to": dir }).to_string();
    let (status, body) = target.post(cti_gateway::http::BACKUP, &token, Some(&request))?;
    if (200..300).contains(&status) {
        println!("{}", body.trim_end());
        return Ok(());
    }
    anyhow::bail!("the gateway answered {status}: {}", gateway_message(&body))
}

/// `sync ...`: a request to the sync API, its answer printed (the JSON, or
/// the CSV of `export-map`); an error with the gateway's message when it
/// refused.
fn sync(command: SyncCommand) -> anyhow::Result<()> {
    use cti_gateway::http::{
        SYNC_CONFLICTS, SYNC_IDMAP_CSV, SYNC_OUTBOX, SYNC_OUTBOX_ROW, SYNC_STATUS, SYNC_SYSTEM,
    };
    let GatewayArgs { config, url } = command.gateway();
    let (target, token) = admin_target(config.clone(), url.as_deref())?;
    let (status, body) = match &command {
        SyncCommand::Status { .. } => target.get(SYNC_STATUS, &token)?,
        SyncCommand::Outbox {
            system,
            state,
            after,
            limit,
            ..
        } => {
            let query = query_string(&[
                ("system", system.clone()),
                ("state", state.clone()),
                ("after", after.map(|a| a.to_string())),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            target.get(&format!("{SYNC_OUTBOX}{query}"), &token)?
        }
        SyncCommand::Retry { id, .. } => {
            target.post(&format!("{SYNC_OUTBOX_ROW}{id}/retry"), &token, None)?
        }
        SyncCommand::Conflicts {
            system,
            since,
            limit,
            ..
        } => {
            let query = query_string(&[
                ("system", system.clone()),
                ("since", since.clone()),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            target.get(&format!("{SYNC_CONFLICTS}{query}"), &token)?
        }
        SyncCommand::Initial { system, .. }
        | SyncCommand::Relink { system, .. }
        | SyncCommand::Resume { system, .. } => {
            let action = match &command {
                SyncCommand::Initial { .. } => "initial",
                SyncCommand::Relink { .. } => "relink",
                _ => "resume",
            };
            // Its path segment as is: a system's name needs no encoding.
            let plain = !system.is_empty()
                && system.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !plain {
                anyhow::bail!("{system:?} is not a system name (lowercase Latin letters, digits, _ or -), e.g. bitrix24");
            }
            target.post(&format!("{SYNC_SYSTEM}{system}/{action}"), &token, None)?
        }
        SyncCommand::ExportMap { system, .. } => {
            let query = query_string(&[("system", Some(system.clone()))]);
            target.get(&format!("{SYNC_IDMAP_CSV}{query}"), &token)?
        }
    };
    if (200..300).contains(&status) {
        if matches!(command, SyncCommand::ExportMap { .. }) {
            print!("{body}");
        } else {
            println!("{}", body.trim_end());
        }
        return Ok(());
    }
    anyhow::bail!("the gateway answered {status}: {}", gateway_message(&body))
}

/// `?name=value&...` of the values given, percent-encoded; "" when none is.
fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            let value = value.as_deref()?;
            let value =
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
            Some(format!("{name}={value}"))
        })
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

/// The gateway's own message in a refusal, not its JSON wrapping.
fn gateway_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// Where `accept-file`, `backup` and `sync` send their request: plain
/// HTTP/1.1 over a `std::net::TcpStream`, one request, `Connection: close`.
struct Target {
    /// The `Host` header: the address as given.
    host: String,
    addrs: Vec<std::net::SocketAddr>,
    /// A path the gateway is published under (behind a proxy), or "".
    prefix: String,
}

impl Target {
    /// The gateway on this machine at `server.listen` (an unspecified
    /// address, 0.0.0.0 or [::], is reached on loopback).
    fn listening_on(listen: std::net::SocketAddr) -> Target {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Target {
            host: addr.to_string(),
            addrs: vec![addr],
            prefix: String::new(),
        }
    }

    /// `http://HOST[:PORT][/PREFIX]`.
    fn from_url(url: &str) -> anyhow::Result<Target> {
        use std::net::ToSocketAddrs as _;
        let rest = url
            .strip_prefix("http://")
            .context("--url must be the gateway's own http:// address (accept-file speaks plain HTTP), e.g. http://127.0.0.1:8080")?;
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addrs: Vec<_> = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        let prefix = prefix.trim_end_matches('/');
        Ok(Target {
            host: host.to_owned(),
            addrs,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }

    /// POSTs `json` (or an empty body) to `path` with the Bearer `token`;
    /// the status and the body of the answer.
    fn post(&self, path: &str, token: &str, json: Option<&str>) -> anyhow::Result<(u16, String)> {
        self.request("POST", path, Some(token), json)
    }

    /// GETs `path` (with its query) with the Bearer `token`; the status and
    /// the body of the answer.
    fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
        self.request("GET", path, Some(token), None)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        use std::io::{Read as _, Write as _};
        use std::time::Duration;
        let mut stream = self
            .addrs
            .iter()
            .find_map(|addr| std::net::TcpStream::connect_timeout(addr, Duration::from_secs(5)).ok())
            .with_context(|| format!("cannot connect to the gateway at {} (is it running? --url gives another address)", self.host))?;
        // Taking a large file (parsing, building the index) takes a while.
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let (content_type, body) = match json {
            Some(json) => ("Content-Type: application/json\r\n", json),
            None => ("", ""),
        };
        let authorization = token.map_or_else(String::new, |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
        let request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\n{authorization}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.prefix,
            self.host,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .context("the gateway's answer did not arrive")?;
        let (status, chunked, body) =
            parse_answer(&answer).context("the gateway's answer is not HTTP")?;
        if !chunked {
            return Ok((status, String::from_utf8_lossy(body).into_owned()));
        }
        let body = dechunk(body).context(
            "the gateway's answer broke off before its end (see the gateway's log); nothing of it was printed",
        )?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The status of an HTTP/1.1 answer read to its end, whether its body is
/// chunked, and the body as sent.
fn parse_answer(answer: &[u8]) -> Option<(u16, bool, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    Some((status, chunked, &answer[end + 4..]))
}

/// A chunked body's content; `None` when it does not end with its last
/// (empty) chunk: the gateway broke the answer off.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// mimalloc: fewer cycles per allocation on the request path than glibc's
/// malloc, and it hands freed memory back to the system after a reload.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
