//! Failpoints: observable pauses at the protocol's step boundaries, for the crash suite.
//!
//! Only built with the `failpoints` cargo feature. Without it, [`hit`] is an empty
//! inline function and the environment is never read: production builds pay nothing.
//!
//! With it, `KVR_FAILPOINT=NAME` (or `NAME@N` for the N-th arrival) makes the
//! process print `kv-rotator failpoint reached: NAME` to stderr when a rotation arrives
//! at `NAME`, then block that thread forever. The crash harness watches for the line and
//! sends SIGKILL, so the process dies exactly between two steps while other rotations
//! are wherever they happen to be.
//!
//! Why not the `fail` crate: the harness needs a pause it can *observe* from another
//! process; `fail`'s `pause` is released from inside the process and its `print` goes
//! through `log`, which this binary does not route. One counter and an env variable
//! are all that is needed. (The variable is not `KV_ROTATOR_*`: that prefix is the
//! configuration's, and an unknown key there is an error.)

/// The step boundaries, in protocol order.
pub const POINTS: &[&str] = &[
    "after-fence",
    "after-journal",
    "after-set",
    "after-step-tag",
    "after-test",
    "after-finish",
    "after-journal-delete",
];

/// Multi-password only: the target's old passwords are retired, the version's
/// `kv-rotator-retire-after` tag not yet cleared (`engine::retire`).
pub const RETIRE_POINTS: &[&str] = &["after-retire"];

/// Marks arrival at step boundary `name`.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Marks arrival at step boundary `name`; pauses forever if it is the armed point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static ARRIVALS: AtomicU32 = AtomicU32::new(0);
    let armed = ARMED.get_or_init(|| {
        let raw = std::env::var("KVR_FAILPOINT").ok()?;
        let (point, nth) = match raw.split_once('@') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
            None => (raw, 1),
        };
        Some((point, nth))
    });
    let Some((point, nth)) = armed else { return };
    if point != name || ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "kv-rotator failpoint reached: {name}");
    let _ = err.flush();
    drop(err);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
