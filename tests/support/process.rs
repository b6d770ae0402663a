//! The gateway's binary as a child process, for what only a real process
//! shows: its whole log output, signals, resource limits.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on now (bind, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `cti-gateway serve --config CONFIG`, stdout and stderr into `log`,
/// `RUST_LOG` unset (the config's `[log]` decides).
pub fn serve_command(config: &Path, log: &Path) -> Command {
    let log = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cti-gateway"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().expect("log fd")))
        .stderr(Stdio::from(log));
    command
}

/// Runs `command` to its end with its output captured; panics after 20 s.
pub fn run_to_end(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the command did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The binary run with `args` (a command-line client of a running gateway:
/// no `CTI_API_TOKEN` from outside), to its end: its exit code, stdout and
/// stderr.
pub async fn run_cli(args: Vec<String>) -> (Option<i32>, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cti-gateway"));
        command.args(args).env_remove("CTI_API_TOKEN");
        run_to_end(command)
    })
    .await
    .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cti-gateway check-config --config FILE` with `text` written to FILE
/// first, the secrets' environment variables unset.
pub fn check_config(file: &Path, text: &str) -> Output {
    std::fs::write(file, text).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .env_remove("CTI_SOAP_PASSWORD")
        .env_remove("CTI_API_TOKEN")
        .output()
        .expect("run cti-gateway check-config")
}

/// A running gateway process; killed (SIGKILL) if dropped still running.
pub struct Child(pub std::process::Child);

impl Child {
    /// Starts `command` and waits (20 s at most) until `addr` answers
    /// `ready_path` with 200.
    pub async fn start(mut command: Command, addr: SocketAddr, ready_path: &str) -> Child {
        let mut child = Child(command.spawn().expect("the gateway binary starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("the gateway exited at start: {status}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && super::get(addr, ready_path).await.status == 200
            {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not answer {ready_path} with 200 within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit (20 s at most; panics after that).
    pub async fn stop(mut self) {
        // SAFETY: kill only sends a signal to our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
