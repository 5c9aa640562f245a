//! A `kv-rotator` child process for the suites that run the binary: its stdout and
//! stderr are drained by threads as they come (so a chatty log level never blocks it on
//! a full pipe) into one string; it is killed and reaped on drop.

#![allow(dead_code)] // not every suite uses every helper

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// The admin listener's address for children that do not name one: a port the OS picks,
/// so that processes of parallel tests (and of other checkouts on the machine) never
/// contend for the default `127.0.0.1:9464`.
pub const ADMIN_LISTEN_ENV: &str = "KV_ROTATOR_ADMIN__LISTEN";

impl Proc {
    /// Starts `command` with its output piped to this process (and, unless it sets or
    /// removes [`ADMIN_LISTEN_ENV`], its admin listener on a port the OS picks).
    pub fn spawn(command: &mut Command) -> Proc {
        if !command.get_envs().any(|(key, _)| key == ADMIN_LISTEN_ENV) {
            command.env(ADMIN_LISTEN_ENV, "127.0.0.1:0");
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn kv-rotator");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let readers = streams
            .into_iter()
            .map(|mut stream| {
                let output = output.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                })
            })
            .collect();
        Proc { child, output, readers }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Its exit status, once it has exited (then with all its output read).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        self.join_readers();
        Some(status)
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("kv-rotator exited early with {status}:\n{}", self.output());
        }
    }

    /// Waits until the webhook on 127.0.0.1:`port` answers `/healthz` with 200, at most
    /// 60 s; panics with the output if it exits first.
    pub async fn wait_healthy(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "webhook not healthy within 60 s:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The address `serve` logged in its `field` (`webhook_addr`, `admin_addr`) once it
    /// listens, at most 60 s; panics with the output if it exits first. A configuration
    /// that says port 0 lets the OS pick a port the test then learns here: no port is
    /// bound, dropped and bound again, a gap in which another process could take it.
    pub async fn logged_addr(&mut self, field: &str) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Some(addr) = self.logged(field) {
                return addr;
            }
            assert!(Instant::now() < deadline, "no {field} logged within 60 s:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address logged in its `field` so far, if any (see [`Self::logged_addr`]).
    pub fn logged(&self, field: &str) -> Option<std::net::SocketAddr> {
        self.output().lines().find_map(|line| addr_after(line, field))
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap; returns its output.
    pub fn sigkill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    /// SIGTERM, then its exit within 20 s; returns its status and output.
    pub fn sigterm(mut self) -> (ExitStatus, String) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.exited() {
                return (status, self.output());
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`sigterm`](Self::sigterm), asserting a clean exit; returns its output.
    pub fn terminate(self) -> String {
        let (status, output) = self.sigterm();
        assert!(status.success(), "exit {status} after SIGTERM:\n{output}");
        output
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// The first socket address after `field` in a log line, in any log format (`field=addr`,
/// `"field":"addr"`, with or without colour codes, whose digits are skipped).
fn addr_after(line: &str, field: &str) -> Option<std::net::SocketAddr> {
    let rest = &line[line.find(field)? + field.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .find_map(|word| word.parse().ok().filter(|addr: &std::net::SocketAddr| addr.port() != 0))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `failpoints` build prints when a rotation reaches the armed point.
pub const MARKER: &str = "kv-rotator failpoint reached";

/// A private copy of the binary, taken at once: another `cargo build` of the workspace
/// without the feature would replace `target/debug/kv-rotator` under a running suite.
pub fn failpoint_binary(dir: &std::path::Path) -> std::path::PathBuf {
    const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
    let copy = dir.join("kv-rotator");
    std::fs::copy(BIN, &copy).expect("copy the kv-rotator binary");
    let bytes = std::fs::read(&copy).unwrap();
    assert!(
        bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "{BIN} was built without the failpoints feature (or replaced by another build): \
         run `cargo test -p kv-rotator --features failpoints --test crash`"
    );
    copy
}

/// A `serve` process with `config`, the failpoint armed or not. One engine runs at a
/// time in the crash suites, so claims need no settle delay.
pub fn spawn_serve(bin: &std::path::Path, config: &std::path::Path, failpoint: Option<&str>) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"]).arg(config).env("RUST_LOG", "info,kv_rotator::audit=warn");
    cmd.env("KVR_LEASE_SETTLE_MS", "0").env_remove("KVR_FAILPOINT");
    if let Some(point) = failpoint {
        cmd.env("KVR_FAILPOINT", point);
    }
    Proc::spawn(&mut cmd)
}

/// What a `kv-rotator dev` started as `proc` with `--state-dir state` writes into
/// `endpoints.json` once it is ready (within 60 s, or the test fails with its output).
pub async fn dev_endpoints(proc: &mut Proc, state: &std::path::Path) -> serde_json::Value {
    let path = state.join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        proc.assert_running();
        assert!(Instant::now() < deadline, "dev mode not ready within 60 s:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
