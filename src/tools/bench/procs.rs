//! The processes a benchmark runs (`ci-worker run`, `ci-worker emulator`, the raw relay: this same
//! binary), their environment, and what `/proc` says about them.

use anyhow::{bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// A child process of the benchmark; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// `http.listen` port of a worker (`/readyz`, `/metrics`).
    pub http_port: Option<u16>,
}

impl Proc {
    /// Starts `ci-worker <args>` with `env` on top of the benchmark's own environment.
    pub fn spawn(
        name: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
        log_dir: &Path,
    ) -> Result<Proc> {
        let exe = std::env::current_exe().context("locating the ci-worker binary")?;
        Proc::spawn_exe(&exe, name, args, env, log_dir)
    }

    /// [`Proc::spawn`] of another binary (`--worker-bin`: an older worker under the same benchmark).
    pub fn spawn_exe(
        exe: &Path,
        name: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
        log_dir: &Path,
    ) -> Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            // The benchmark's own log filter is not the processes' (`--worker-log` sets theirs).
            .env_remove("RUST_LOG")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
            http_port: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the process has already exited (with the tail of its log).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// CPU time and peak RSS now.
    pub fn usage(&self) -> Option<Usage> {
        self.pid().and_then(usage_of)
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of a log that contain `needle`.
pub fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime, seconds.
    pub cpu_secs: f64,
    /// VmHWM (peak resident set), KiB.
    pub peak_rss_kib: u64,
}

/// Reads utime+stime (`/proc/<pid>/stat`, fields 14 and 15) and VmHWM (`/proc/<pid>/status`).
pub fn usage_of(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14 → index 11, stime 15 → index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu_secs: (utime + stime) as f64 / clock_ticks() as f64,
        peak_rss_kib,
    })
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on every Linux this runs on).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until a worker started with an HTTP port says it is ready (`/readyz`, which checks the
/// broker), so that start-up is not measured.
pub async fn wait_ready(proc: &mut Proc, limit: Duration) -> Result<()> {
    let port = proc
        .http_port
        .with_context(|| format!("{} has no HTTP port", proc.name))?;
    wait_http_ok(&format!("http://127.0.0.1:{port}/readyz"), proc, limit).await
}

/// Waits until `url` answers 2xx, or fails after `limit` (checking that `proc` is still alive).
pub async fn wait_http_ok(url: &str, proc: &mut Proc, limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        proc.check_alive()?;
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not answer {url} within {limit:?}; log {}:\n{}",
                proc.name,
                proc.log.display(),
                tail(&proc.log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
