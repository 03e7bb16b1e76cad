//! Starting and stopping the processes under test: a child that is killed when dropped, free
//! loopback ports, waiting for a port to accept, and the exact install line for a missing peer.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .with_context(|| format!("create log file for {name}"))?;
        let log2 = log.try_clone()?;
        cmd.stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts a TCP connection, or fails after `timeout`, naming `what`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what} did not accept connections on {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Finds `binary` on PATH (or in /usr/sbin, where Debian puts some daemons); if missing, the
/// error carries the exact `apt-get install` line.
pub fn require_binary(binary: &str, debian_package: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]) {
        let candidate = dir.join(binary);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{binary} is not installed; install it with: sudo apt-get install -y {debian_package}")
}

/// A running `herald serve --dev` process on a free loopback port.
pub struct Herald {
    pub proc: Proc,
    /// `127.0.0.1:PORT`
    pub addr: SocketAddr,
}

impl Herald {
    /// The `herald` binary: `$HERALD_BIN`, else next to this executable (cargo puts both in
    /// `target/release`); the error says how to build it.
    pub fn binary() -> anyhow::Result<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("HERALD_BIN") {
            return Ok(p.into());
        }
        let exe = std::env::current_exe()?;
        let candidate = exe.with_file_name("herald");
        if candidate.is_file() {
            return Ok(candidate);
        }
        bail!(
            "no herald binary next to {}; build it with `cargo build --release -p herald-server` \
             (or set HERALD_BIN)",
            exe.display()
        )
    }

    /// Starts herald on `data_dir` with `HERALD_<SECTION>__<KEY>` overrides such as
    /// `("STORAGE__DURABILITY", "fsync")`; the per-connection request rate limit is off (a
    /// benchmark publisher is one heavy backend). Returns once it accepts connections.
    pub async fn start(
        data_dir: &Path,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Herald> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(Herald::binary()?);
        cmd.arg("serve")
            .arg("--dev")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("HERALD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("HERALD_LIMITS__REQUESTS_PER_SEC", "0")
            .env("HERALD_LIMITS__PUBLISHES_PER_UID_PER_SEC", "0")
            .env("HERALD_LIMITS__SESSIONS_PER_UID_PER_MIN", "0")
            // Every bench client comes from loopback: the per-address cap would refuse the
            // fan-out's subscribers.
            .env("HERALD_SERVER__MAX_CONNECTIONS_PER_IP", "0");
        for (k, v) in env {
            cmd.env(format!("HERALD_{k}"), v);
        }
        let proc = Proc::spawn("herald", cmd, log_dir)?;
        wait_for_port(addr, Duration::from_secs(120), "herald").await?;
        Ok(Herald { proc, addr })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Resident memory of the server process in KiB (VmRSS from /proc/<pid>/status).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.proc.pid())
    }
}

/// VmRSS of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system, all threads) of `pid` in microseconds, from `/proc/<pid>/stat`
/// (clock ticks of 10 ms: USER_HZ is 100 on Linux).
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no field {i} in /proc/{pid}/stat"))
    };
    // rest: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12)
    Ok((ticks(11)? + ticks(12)?) * 10_000)
}

/// Raises this process's open-file soft limit to its hard limit (children spawned afterwards
/// inherit it) and returns `(soft, hard)` as they are now. The hard limit needs privileges to
/// raise, so it is reported, never changed.
pub fn raise_fd_limit() -> anyhow::Result<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: cur.maximum,
        },
    )
    .context("setrlimit(RLIMIT_NOFILE) to the hard limit")?;
    let now = getrlimit(Resource::Nofile);
    Ok((now.current.unwrap_or(u64::MAX), hard))
}

impl Herald {
    /// Spawns `herald serve --dev` on `addr` like [`Herald::start`] but returns at once,
    /// without waiting for the port: the restart scenario times the way to ready itself.
    pub fn spawn(
        data_dir: &Path,
        addr: SocketAddr,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Herald> {
        let mut cmd = Command::new(Herald::binary()?);
        cmd.arg("serve")
            .arg("--dev")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("HERALD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("HERALD_LIMITS__REQUESTS_PER_SEC", "0")
            .env("HERALD_LIMITS__PUBLISHES_PER_UID_PER_SEC", "0")
            .env("HERALD_LIMITS__SESSIONS_PER_UID_PER_MIN", "0")
            // Every bench client comes from loopback: the per-address cap would refuse the
            // fan-out's subscribers.
            .env("HERALD_SERVER__MAX_CONNECTIONS_PER_IP", "0");
        for (k, v) in env {
            cmd.env(format!("HERALD_{k}"), v);
        }
        let proc = Proc::spawn("herald", cmd, log_dir)?;
        Ok(Herald { proc, addr })
    }
}

/// Raises the soft fd limit to the hard one, then fails clearly (naming `what`) when
/// `connections` sockets plus some slack would still not fit. Children spawned afterwards (the
/// system under test) inherit the raised limit.
pub fn ensure_fd_limit(connections: usize, what: &str) -> anyhow::Result<()> {
    let (soft, _hard) = raise_fd_limit()?;
    let need = connections as u64 + 256;
    if soft < need {
        bail!(
            "{what}: {connections} connections need about {need} open files but the limit is \
             {soft}; raise it (`ulimit -n`, or `nofile` in /etc/security/limits.conf)"
        );
    }
    Ok(())
}
