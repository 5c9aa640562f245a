//! The leak scanner over the whole test suite (issue 10, item 8), for test builds only.
//!
//! kv-rotator's crates depend on this one only under their `leak-ledger` feature, which
//! `scripts/test.sh` switches on for the test suite (`kv-rotator/leak-ledger` forwards it
//! to the rotators and the key vault crate); a build without the feature does not contain
//! a line of it. Three parts:
//!
//! - the **ledger** ([`record`]): every password a run generates
//!   (`PasswordPolicy::try_generate`), every secret a rotator's scrubber holds (the
//!   passwords of a request, old hashes read from the target) and every derived secret
//!   (SCRAM verifier, MariaDB and Redis hashes, bcrypt hashes) is appended, hex-encoded,
//!   to the file [`LEDGER_ENV`] names. Every process of the run appends to the one file.
//! - the **capture**: what leaves kv-rotator is written, beside its usual destination,
//!   into the directory [`SCAN_DIR_ENV`] names, one file per stream and process
//!   (`<stream>.<pid>`): log events at every level of kv-rotator's own targets and at
//!   `INFO` and above of dependencies — the most any `RUST_LOG` can show ([`log_layer`],
//!   [`ensure_log_capture`]); a `kv-rotator` child's stdout and stderr ([`tee_stdio`]),
//!   its argv and environment and those of the `az`/`azd` helpers it starts
//!   ([`record_spawn`]); the dev vault's tags, content types and attributes of every
//!   write, the metrics expositions, the alert and notification payloads ([`capture`]).
//! - the **scanner** ([`scan`], the `leak-scan` binary): searches every captured file for
//!   every recorded secret, as is and in the encodings text gives it.
//!
//! With neither variable set every hook does nothing.

// A ledger holds every password of a run: it must never be in a binary that ships. The
// crates that link this one refuse a release build with their `leak-ledger` feature on
// (compile_error in the worker, the rotators and the key vault crate); this crate itself
// still builds in release, so that `cargo build --release` of the workspace, which builds
// every member, works.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

pub mod scan;
#[cfg(unix)]
mod tee;

#[cfg(unix)]
pub use tee::{tee_stdio, StdioTee};

/// The ledger file: one line per secret, `<kind> <hex of its bytes>`.
pub const LEDGER_ENV: &str = "KVR_LEAK_LEDGER";
/// The directory captured output is written into.
pub const SCAN_DIR_ENV: &str = "KVR_LEAK_SCAN_DIR";

/// What a recorded secret is; the scanner reports its counts by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A password from `PasswordPolicy::try_generate`: the engine's pending passwords and
    /// canaries, and the tests' fixtures.
    Generated,
    /// A secret a rotator was handed or read (a request's passwords, a target's old
    /// hashes): fixtures written as literals reach the ledger this way.
    Handled,
    /// Computed from a password: a SCRAM verifier, a MariaDB or Redis hash, a bcrypt hash.
    Derived,
}

impl Kind {
    /// The ledger's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Generated => "generated",
            Kind::Handled => "handled",
            Kind::Derived => "derived",
        }
    }
}

/// Where this process writes; read from the environment once.
struct Sink {
    ledger: Option<Mutex<File>>,
    dir: Option<PathBuf>,
    /// Open capture files by stream.
    files: Mutex<HashMap<&'static str, File>>,
    /// Hashes of the secrets recorded by this process, so each is written once.
    seen: Mutex<HashSet<u64>>,
    hasher: RandomState,
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let ledger = std::env::var_os(LEDGER_ENV)
            .filter(|path| !path.is_empty())
            .and_then(|path| append(&PathBuf::from(path)))
            .map(Mutex::new);
        let dir = std::env::var_os(SCAN_DIR_ENV).filter(|dir| !dir.is_empty()).map(PathBuf::from);
        if let Some(dir) = &dir {
            let _ = std::fs::create_dir_all(dir);
        }
        Sink {
            ledger,
            dir,
            files: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            hasher: RandomState::new(),
        }
    })
}

fn append(path: &std::path::Path) -> Option<File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

/// A new capture file of this process for `stream`, when a scan directory is set.
fn capture_file(stream: &str) -> Option<File> {
    let dir = sink().dir.as_ref()?;
    append(&dir.join(format!("{stream}.{}", std::process::id())))
}

/// Appends `secret` to the ledger (once per process), when a ledger is set. Empty
/// secrets are skipped. The first call of a process also installs the log capture
/// ([`ensure_log_capture`]).
pub fn record(kind: Kind, secret: &str) {
    let sink = sink();
    let Some(ledger) = &sink.ledger else { return };
    ensure_log_capture();
    if secret.is_empty() || !sink.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(sink.hasher.hash_one(secret)) {
        return;
    }
    let mut line = String::with_capacity(secret.len() * 2 + 12);
    line.push_str(kind.name());
    line.push(' ');
    for byte in secret.bytes() {
        line.push_str(&format!("{byte:02x}"));
    }
    line.push('\n');
    // One write per line on a file opened for appending: lines of concurrent processes
    // do not interleave.
    let _ = ledger.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes());
}

/// Appends `text` and a line feed to this process's capture file of `stream`
/// (`<scan dir>/<stream>.<pid>`), when a scan directory is set.
pub fn capture(stream: &'static str, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    capture_bytes(stream, &bytes);
}

/// Appends `bytes` as they are to this process's capture file of `stream`.
pub fn capture_bytes(stream: &'static str, bytes: &[u8]) {
    let sink = sink();
    if sink.dir.is_none() {
        return;
    }
    let mut files = sink.files.lock().unwrap_or_else(|e| e.into_inner());
    let file = match files.entry(stream) {
        Entry::Occupied(file) => file.into_mut(),
        Entry::Vacant(slot) => match capture_file(stream) {
            Some(file) => slot.insert(file),
            None => return,
        },
    };
    let _ = file.write_all(bytes);
}

/// Captures a child process's argv and environment (stream `spawn`), one per line:
/// `argv: …`, `env: NAME=value`. `who` says which spawn it is.
pub fn record_spawn<A, K, V>(who: &str, argv: impl IntoIterator<Item = A>, env: impl IntoIterator<Item = (K, V)>)
where
    A: AsRef<OsStr>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut text = format!("spawn: {who} (recorded by pid {})\n", std::process::id());
    for arg in argv {
        text.push_str(&format!("argv: {}\n", arg.as_ref().to_string_lossy()));
    }
    for (name, value) in env {
        text.push_str(&format!("env: {}={}\n", name.as_ref().to_string_lossy(), value.as_ref().to_string_lossy()));
    }
    capture("spawn", &text);
}

/// Set by [`process_started`]: the process configures its own logging, with
/// [`log_layer`], so [`ensure_log_capture`] leaves it alone.
static OWN_LOGGING: AtomicBool = AtomicBool::new(false);

/// Called first thing by the `kv-rotator` binary, while it is the only thread: records
/// its own argv and environment as it was started with them ([`record_spawn`]), so every
/// way a test starts it is covered, and leaves the log capture to its logging setup.
pub fn process_started() {
    OWN_LOGGING.store(true, Ordering::Relaxed);
    record_spawn("this process, as started", std::env::args_os(), std::env::vars_os());
}

/// The capture of log events that pass `filter`, formatted as text into
/// `<scan dir>/log.<pid>`; `None` without a scan directory. The worker passes its cap on
/// dependencies alone (kv-rotator's own targets at every level, others at `INFO` and
/// above): the most any `RUST_LOG` can show.
pub fn log_layer<S>(filter: Targets) -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let file = capture_file("log")?;
    let layer = tracing_subscriber::fmt::layer().with_writer(Mutex::new(file)).with_ansi(false);
    Some(layer.with_filter(filter).boxed())
}

/// In a process that sets up no logging of its own (a test binary), installs
/// [`log_layer`] as the global subscriber, once, unless one is installed already. Events
/// logged before it ran, and those inside a test's own scoped subscriber, are not captured.
/// It does not install the `log` crate's bridge (a test may install its own logger).
pub fn ensure_log_capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if OWN_LOGGING.load(Ordering::Relaxed) || tracing::dispatcher::has_been_set() {
            return;
        }
        // The worker's `logging::dependency_cap`.
        let filter = Targets::new().with_target("kv_rotator", LevelFilter::TRACE).with_default(LevelFilter::INFO);
        if let Some(layer) = log_layer(filter) {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
        }
    });
}
