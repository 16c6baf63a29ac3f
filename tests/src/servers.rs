//! Real servers for tests, started on free loopback ports with temp dirs and stopped on drop:
//! etcd, and our own binaries as child processes (so kill -9 and SIGSTOP are real).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A temp dir on tmpfs when the machine has one (etcd fsyncs every write; tests do not need
/// durability across machine crashes, only across process restarts).
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("rewind-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temp dir")
}

fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200")
}

/// A plain HTTP GET on loopback: (status code, body). Status 0 when nothing answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, &[])
}

/// `http_get` with extra request headers (`("Authorization", "Bearer …")`).
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(port, "GET", path, headers)
}

/// One HTTP/1.1 request without a body (`GET`, `POST`, …): status and body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one Prometheus sample (`name{labels} value`) in a text exposition, if present.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Kills a child (and reaps it) when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // A stopped process ignores SIGKILL until continued on some kernels' ptrace paths;
            // SIGCONT first makes the kill reliable.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A real etcd (Debian's `etcd-server`) on free loopback ports.
#[derive(Debug)]
pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: ChildGuard,
}

impl Etcd {
    pub fn start() -> Etcd {
        // A free port can be taken by another process before etcd binds it (tests run in
        // parallel): such a start is tried again on other ports.
        for _ in 0..4 {
            match Etcd::try_start_at(free_port()) {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("etcd did not become healthy; log: {log}"),
            }
        }
        Etcd::start_at(free_port())
    }

    /// Starts etcd with its client port chosen beforehand (to start clients before the server).
    pub fn start_at(client_port: u16) -> Etcd {
        let mut last = String::new();
        for _ in 0..4 {
            match Etcd::try_start_at(client_port) {
                Ok(etcd) => return etcd,
                // (The peer port, chosen anew each time, may be the one taken.)
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("etcd did not become healthy on port {client_port}; log: {log}"),
            }
        }
        panic!("etcd did not become healthy on port {client_port}; log: {last}")
    }

    fn try_start_at(client_port: u16) -> Result<Etcd, String> {
        let dir = fast_tempdir();
        let peer_port = free_port();
        let child = Self::spawn(dir.path(), client_port, peer_port);
        let etcd = Etcd {
            client_port,
            peer_port,
            dir,
            child,
        };
        etcd.ready()?;
        Ok(etcd)
    }

    /// etcd serving clients over TLS only, requiring client certificates signed by the CA of
    /// `pki` (its `server.pem` is etcd's certificate).
    pub fn start_tls(pki: &crate::pki::Pki) -> Etcd {
        let dir = fast_tempdir();
        let client_port = free_port();
        let peer_port = free_port();
        let client = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "t1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t1={peer}")])
            .args(["--cert-file", &pki.path("server.pem")])
            .args(["--key-file", &pki.path("server.key")])
            .args(["--trusted-ca-file", &pki.path("ca.pem")])
            .arg("--client-cert-auth")
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        assert!(
            wait_port(client_port, Duration::from_secs(20)),
            "etcd (TLS) did not listen"
        );
        Etcd {
            client_port,
            peer_port,
            dir,
            child: ChildGuard(Some(child)),
        }
    }

    fn spawn(dir: &Path, client_port: u16, peer_port: u16) -> ChildGuard {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "t1", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t1={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); install it with `apt-get install -y etcd-server` (scripts/test.sh does)")
            });
        ChildGuard(Some(child))
    }

    fn wait_ready(&self) {
        if let Err(log) = self.ready() {
            panic!(
                "etcd did not become healthy on port {}; log: {log}",
                self.client_port
            );
        }
    }

    /// Waits until etcd answers; its log when it does not (or exited).
    fn ready(&self) -> Result<(), String> {
        let log = || std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get_ok(self.client_port, "/health") {
                return Ok(());
            }
            if log().contains("address already in use") {
                return Err(log());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        Err(log())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The etcd process (to read its CPU time in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills etcd (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts etcd again on the same ports and data: a restart.
    pub fn restart(&mut self) {
        self.child.kill();
        self.child = Self::spawn(self.dir.path(), self.client_port, self.peer_port);
        self.wait_ready();
    }
}

/// A cluster of real etcd members on free loopback ports, each its own process and data
/// directory: for faults of one member (killed, frozen) while the others keep a quorum.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<(u16, u16, Option<ChildGuard>)>,
    cluster: String,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        let dir = fast_tempdir();
        let members: Vec<(u16, u16, Option<ChildGuard>)> =
            (0..n).map(|_| (free_port(), free_port(), None)).collect();
        let cluster = members
            .iter()
            .enumerate()
            .map(|(i, (_, peer, _))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir,
            members,
            cluster,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let (client_port, peer_port, _) = self.members[i];
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd; install it with `apt-get install -y etcd-server`");
        self.members[i].2 = Some(ChildGuard(Some(child)));
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get_ok(self.members[i].0, "/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")));
        panic!("etcd member m{i} did not become healthy: {log:?}");
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(port, _, _)| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// The running members' process ids, in member order.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|(_, _, c)| c.as_ref().map(ChildGuard::pid))
            .collect()
    }

    /// Kills member `i` (SIGKILL) and leaves it down.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].2.take() {
            c.kill();
        }
    }

    /// Starts a killed member again on its ports and data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) member `i`: it keeps its sockets but answers
    /// nothing, as a paused container or a stalled machine does.
    pub fn freeze(&self, i: usize, frozen: bool) {
        let pid = self.members[i].2.as_ref().expect("member is running").pid();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// One of our binaries running as a child process, with its stderr in a file.
#[derive(Debug)]
pub struct Proc {
    pub child: ChildGuard,
    pub log: PathBuf,
}

/// A program to start: a binary (`&str`), or a binary and its leading arguments, such as
/// `[rewind, "coordinator"]` for one of the services of the one `rewind` binary.
pub trait Program {
    fn command(&self) -> Command;
    fn describe(&self) -> String;
}

impl Program for &str {
    fn command(&self) -> Command {
        Command::new(self)
    }
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl<const N: usize> Program for [&str; N] {
    fn command(&self) -> Command {
        let mut cmd = Command::new(self[0]);
        cmd.args(&self[1..]);
        cmd
    }
    fn describe(&self) -> String {
        self.join(" ")
    }
}

impl Proc {
    pub fn spawn(bin: impl Program, args: &[String], log: PathBuf) -> Proc {
        Proc::spawn_with_env(bin, args, log, &[])
    }

    /// Like `spawn`, with extra environment variables.
    pub fn spawn_with_env(
        bin: impl Program,
        args: &[String],
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let child = bin
            .command()
            .args(args)
            .envs(env.iter().copied())
            .env("REWIND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.describe()));
        Proc {
            child: ChildGuard(Some(child)),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until `port` accepts TCP connections.
pub fn wait_port(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// What headless Chromium renders at `url` after its scripts ran (up to 8 s of virtual time):
/// the DOM without the page's own script and style text. Debian's `chromium` (scripts/test.sh
/// installs it; `REWIND_CHROMIUM` names another binary).
pub fn chromium_dom(url: &str) -> String {
    let out = std::process::Command::new(
        std::env::var("REWIND_CHROMIUM").unwrap_or_else(|_| "chromium".into()),
    )
    .args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=8000",
        "--dump-dom",
        url,
    ])
    .output()
    .expect("chromium (Debian's `chromium` package; scripts/test.sh installs it)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    for (open, close) in [("<script>", "</script>"), ("<style>", "</style>")] {
        if let (Some(a), Some(b)) = (text.find(open), text.find(close)) {
            text.replace_range(a..b + close.len(), "");
        }
    }
    text
}

/// Runs `python3 -c SCRIPT ARGS…` (the tests' independent clients) and returns its stdout;
/// fails the test with its stderr, naming `what`, when it fails.
pub fn python(what: &str, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
