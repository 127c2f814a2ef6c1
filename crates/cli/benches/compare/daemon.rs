//! The release daemon as a child process on its own temp dir and socket.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon gets to come up.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A daemon process; killed and its directory removed when dropped.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
}

/// `$COMPARE_DAEMON` (to measure another build, e.g. before a change), else
/// `target/release/automation-frameworkd`, next to this bench's own executable
/// (`target/release/deps/compare-…`), built by `cargo bench` beforehand.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("COMPARE_DAEMON") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let release = exe.parent().and_then(Path::parent).expect("target/release");
    release.join("automation-frameworkd")
}

/// The daemon's command line for a run in `dir`: `config`, `socket`, a state
/// directory and `daemon.log` in `dir`, no HTTP, and none of systemd's variables
/// inherited from the bench's environment (callers add what they need).
pub fn command(dir: &Path, config: &Path, socket: &Path) -> anyhow::Result<Command> {
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut command = Command::new(binary());
    command
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--http", "off", "--log-level", "warn"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(command)
}

impl Daemon {
    /// Starts the daemon with `config` and waits until its socket answers.
    pub fn start(config: &str) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let child = command(dir.path(), &config_path, &socket)?.spawn()?;
        let mut daemon = Daemon { child, dir, socket };
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                anyhow::bail!("the daemon exited with {status}:\n{}", daemon.log());
            }
            if std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok() {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the daemon was not up within {PROMPTLY:?}:\n{}",
                    daemon.log()
                );
            }
            // Waiting for another process; nothing to make time pass for.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("daemon.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

/// The CPU time all the threads of process `pid` have had so far (the first
/// field of each `/proc/<pid>/task/*/schedstat`, in nanoseconds): what a cell
/// costs a daemon, read apart from the load generator's share of the same
/// cores. `None` where the kernel keeps no schedstat.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
