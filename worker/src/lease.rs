//! The engine lease: one engine per vault, kept in Key Vault itself.
//!
//! Key Vault has no compare-and-swap and journal creation is not exclusive, so two
//! engines rotating the same secret at once (two `serve` replicas, `rotate --all` beside
//! a running `serve`) can lose a password. Until the per-secret leases of scale-out
//! exist, every engine (`serve`, `dev`, `rotate`) first claims this lease and refuses to
//! run while another live engine holds it. Built on [`SecretStore`] alone (set, PATCH,
//! list versions), so it needs no permission the worker lacks.
//!
//! - **The lease secret** [`LEASE_SECRET`], content type [`LEASE_CONTENT_TYPE`]. Each
//!   claim is a new version whose value describes the claimer (command, host, pid, a
//!   random holder id, start time; nothing secret) and whose tags say the same
//!   ([`TAG_HOLDER`], [`TAG_COMMAND`], [`TAG_HOST`], [`TAG_PID`], [`TAG_RENEWALS`]). It
//!   has no `rotator` tag (never managed) and no `kv-rotator-journal-for` tag (never a
//!   journal).
//! - **Liveness.** A version is *live* when it is enabled and its `updated` attribute
//!   plus the TTL plus [`CLOCK_ALLOWANCE`] is not before a *reference* instant. The
//!   reference is always a timestamp the service wrote for our own request (the
//!   `created` of our claim, the `updated` of our renewal): every comparison is between
//!   service timestamps, so the hosts' clocks play no part.
//! - **The holder** is the live version with the oldest `created`, ties broken by
//!   version id ([`live_holder`]): whoever lists the same versions reaches the same
//!   verdict.
//! - **Claim** ([`claim`]): write our version, wait the settle delay (more than the one
//!   second Key Vault's whole-second timestamps blur), list the versions. Every version
//!   written after our listing started then has a `created` strictly later than ours,
//!   so it can never sort before us; and its writer, listing after its own write, sees
//!   ours. So of two simultaneous claimers at most one wins. If the holder is not us,
//!   the claim is refused with [`HeldBy`] (who, since when, last heartbeat, when it
//!   lapses) and our losing version is disabled so that it counts for nobody. A claim
//!   whose verdict comes later than its own hold would end is void.
//! - **Heartbeat.** The holder PATCHes its own version (a renewal counter tag, so
//!   `updated` moves; no new version) every `renew_every`, and lists the versions again.
//!   It holds until *start of its last successful renewal + TTL − margin*, on the
//!   monotonic clock and on the wall clock (so neither a suspended host nor a clock step
//!   extends it). A renewal finding another live version older than ours, our version
//!   disabled or deleted, or a gap of more than the TTL between two of our `updated`
//!   stamps (a claimer may have found us lapsed meanwhile) ends the lease for good
//!   ([`NotHeld::Lost`]); a failing renewal is retried sooner, logged at error once the
//!   hold has run out, and the lease is lost once no renewal succeeded for a whole TTL.
//! - **Release** ([`LeaseGuard::release`]): the heartbeat stops and our version is
//!   disabled, so a successor need not wait out the TTL. A process that dies without
//!   releasing blocks successors until its last heartbeat is a TTL (plus the allowance)
//!   old.
//!
//! The engine asks [`LeaseGuard::is_held`] / [`LeaseGuard::check`] (no I/O) before it
//! acts. Limits, by design of a lease without fencing tokens:
//!
//! - It is check-then-act: a step started while the lease was held can still complete
//!   after it lapsed (a long stall right after the check). The margin (default 10 s)
//!   bounds the gap only for steps shorter than it; [`LeaseGuard::held_for`] tells how
//!   much hold is left.
//! - It assumes Key Vault lists a version once its write has returned (read-after-write
//!   within the vault's region) and that the service's timestamps of one vault agree
//!   within about a second (the settle delay and [`CLOCK_ALLOWANCE`] absorb that).
//! - Every claim adds a version and Key Vault never deletes single versions: listing
//!   grows with the number of claims (one per `serve` start and per `rotate` run), at
//!   25 versions a page.
//! - Two claimers can both be refused (each sees a live version the other no longer
//!   counts, e.g. a predecessor lapsing in between); the next try succeeds.
//! - Soft-deleting the lease secret makes every claim fail (409) until it is recovered
//!   or purged; a holder whose version is deleted or disabled loses the lease.
//! - [`LeaseTimings::from_env`] reads `KVR_LEASE_TTL_MS` and `KVR_LEASE_SETTLE_MS`, for
//!   tests only; a settle delay under 1.5 s does not protect against simultaneous claims.
//!
//! Size: ~65 lines of module doc, ~690 of code, ~95 of unit tests. The code is one
//! protocol (claim, verdict, heartbeat, release) over one secret's versions; the safety
//! argument above spans all its steps, so they stay together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kv_rotator_core::limits::MAX_TAG_CHARS;
use kv_rotator_keyvault::{NewSecretVersion, PropertiesUpdate, SecretProperties, SecretStore, StoreError};
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// Name of the lease secret, one per vault.
pub const LEASE_SECRET: &str = "kv-rotator-engine-lease";
/// `contentType` of every lease version.
pub const LEASE_CONTENT_TYPE: &str = "application/vnd.kv-rotator.engine-lease";
/// Tag: the random id of the process that wrote the version.
pub const TAG_HOLDER: &str = "kv-rotator-lease-holder";
/// Tag: the command that claimed (`serve`, `dev`, `rotate`).
pub const TAG_COMMAND: &str = "kv-rotator-lease-command";
/// Tag: the claimer's host name.
pub const TAG_HOST: &str = "kv-rotator-lease-host";
/// Tag: the claimer's process id.
pub const TAG_PID: &str = "kv-rotator-lease-pid";
/// Tag: how many renewals the holder has sent (changes at each, so `updated` moves).
pub const TAG_RENEWALS: &str = "kv-rotator-lease-renewals";
/// Added to the TTL when judging someone else's version: Key Vault's timestamps are
/// whole seconds, and its front ends' clocks may differ slightly.
pub const CLOCK_ALLOWANCE: Duration = Duration::from_secs(2);
/// Settle delays shorter than this do not order simultaneous claims.
const SAFE_SETTLE: Duration = Duration::from_millis(1500);

/// How long a lease lives without renewal, and how it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// A version whose last heartbeat is older than this (plus [`CLOCK_ALLOWANCE`]) is lapsed.
    pub ttl: Duration,
    /// The holder renews this often.
    pub renew_every: Duration,
    /// A claimer waits this long between writing its version and listing.
    pub settle: Duration,
    /// The holder stops counting on the lease this long before others may find it lapsed.
    pub margin: Duration,
}

impl Default for LeaseTimings {
    /// TTL 60 s, renewal every 15 s, settle 3 s, margin 10 s.
    fn default() -> Self {
        Self::with_ttl(Duration::from_secs(60))
    }
}

impl LeaseTimings {
    /// Renewal every `ttl`/4, margin `ttl`/6, the default settle delay (3 s).
    pub fn with_ttl(ttl: Duration) -> Self {
        Self { ttl, renew_every: ttl / 4, settle: Duration::from_secs(3), margin: ttl / 6 }
    }

    /// `[lease]` of the configuration, then `KVR_LEASE_TTL_MS` and `KVR_LEASE_SETTLE_MS`
    /// (finer than the configuration's units, for tests).
    pub fn from_config(config: &kv_rotator_config::LeaseConfig) -> anyhow::Result<Self> {
        let mut timings = Self::with_ttl(Duration::from_secs(config.ttl_secs));
        timings.settle = Duration::from_millis(config.settle_ms);
        timings.with_env_overrides()
    }

    fn with_env_overrides(self) -> anyhow::Result<Self> {
        let ms = |name: &str| -> anyhow::Result<Option<Duration>> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|_| anyhow::anyhow!("{name}={v:?}: expected milliseconds")),
                Err(_) => Ok(None),
            }
        };
        let mut timings = match ms("KVR_LEASE_TTL_MS")? {
            Some(ttl) => Self::with_ttl(ttl).keeping_settle(self.settle),
            None => self,
        };
        if let Some(settle) = ms("KVR_LEASE_SETTLE_MS")? {
            timings.settle = settle;
        }
        timings.validate().map_err(|e| anyhow::anyhow!("engine lease timings: {e}"))?;
        Ok(timings)
    }

    fn keeping_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Checks that a holder can renew before it stops counting on the lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl < Duration::from_secs(2) {
            return Err(format!("ttl {:?} is under 2 s (Key Vault's timestamps are whole seconds)", self.ttl));
        }
        if self.renew_every.is_zero() || self.margin.is_zero() {
            return Err("renew_every and margin must be positive".to_owned());
        }
        if self.renew_every + self.margin >= self.ttl {
            return Err(format!(
                "renew_every {:?} + margin {:?} must be under ttl {:?}",
                self.renew_every, self.margin, self.ttl
            ));
        }
        Ok(())
    }
}

/// Who wrote a lease version, from its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// Random id of the process.
    pub holder_id: String,
    /// `serve`, `dev` or `rotate`.
    pub command: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: String,
}

impl HolderInfo {
    /// This process, claiming for `command`.
    pub fn this_process(command: &str) -> Self {
        let id: [u8; 8] = rand::random();
        Self {
            holder_id: hex::encode(id),
            command: command.to_owned(),
            host: host_name(),
            pid: std::process::id().to_string(),
        }
    }

    fn from_tags(tags: &BTreeMap<String, String>) -> Self {
        let tag = |name: &str| tags.get(name).cloned().unwrap_or_else(|| "?".to_owned());
        Self { holder_id: tag(TAG_HOLDER), command: tag(TAG_COMMAND), host: tag(TAG_HOST), pid: tag(TAG_PID) }
    }

    fn tags(&self, renewals: u64) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_HOLDER.to_owned(), self.holder_id.clone()),
            (TAG_COMMAND.to_owned(), self.command.clone()),
            (TAG_HOST.to_owned(), truncate(&self.host, MAX_TAG_CHARS)),
            (TAG_PID.to_owned(), self.pid.clone()),
            (TAG_RENEWALS.to_owned(), renewals.to_string()),
        ])
    }
}

impl std::fmt::Display for HolderInfo {
    /// The tags are read from the vault, where anyone who can write secrets can set them:
    /// shown escaped and clipped (they reach `rotate`'s stderr and `/readyz`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |text: &str| crate::logging::sanitized(text, 128);
        write!(
            f,
            "`kv-rotator {}` (pid {} on host {}, holder id {})",
            shown(&self.command),
            shown(&self.pid),
            shown(&self.host),
            shown(&self.holder_id)
        )
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn truncate(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// One live lease version, as a verdict names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVersion {
    /// Version id.
    pub version: String,
    /// When it was written (the claim).
    pub created: OffsetDateTime,
    /// Its last heartbeat.
    pub updated: OffsetDateTime,
    /// Who wrote it.
    pub holder: HolderInfo,
}

/// Whether `version` is live at `reference`: enabled, and its last heartbeat plus `ttl`
/// plus [`CLOCK_ALLOWANCE`] is not before `reference`.
pub fn is_live(version: &SecretProperties, reference: OffsetDateTime, ttl: Duration) -> bool {
    let Some(heartbeat) = version.updated.or(version.created) else { return false };
    // Only versions shaped as claims count (a stray version of another kind holds nothing;
    // whoever may write this secret with the right shape controls the lease all the same).
    let is_claim = version.content_type.as_deref() == Some(LEASE_CONTENT_TYPE) && version.tags.contains_key(TAG_HOLDER);
    is_claim && version.enabled && heartbeat + ttl + CLOCK_ALLOWANCE >= reference
}

/// The holder among `versions` at `reference`: the live version with the oldest
/// `created`, ties broken by version id. Versions without a version id or `created`
/// (never the case on the service) are ignored.
pub fn live_holder(versions: &[SecretProperties], reference: OffsetDateTime, ttl: Duration) -> Option<LeaseVersion> {
    versions
        .iter()
        .filter(|v| is_live(v, reference, ttl))
        .filter_map(|v| Some((v.created?, v.version.as_deref()?, v)))
        .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(created, version, v)| LeaseVersion {
            version: version.to_owned(),
            created,
            updated: v.updated.unwrap_or(created),
            holder: HolderInfo::from_tags(&v.tags),
        })
}

/// Another engine holds the lease: why a claim was refused.
#[derive(Debug, Clone)]
pub struct HeldBy {
    /// The vault.
    pub vault: String,
    /// The holder's version.
    pub holder: LeaseVersion,
    /// The service's time at our claim.
    pub observed_at: OffsetDateTime,
    /// The TTL the verdict used.
    pub ttl: Duration,
}

impl HeldBy {
    /// When the holder's version lapses unless it is renewed (service time).
    pub fn lapses_at(&self) -> OffsetDateTime {
        self.holder.updated + self.ttl + CLOCK_ALLOWANCE
    }
}

impl std::fmt::Display for HeldBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = (self.observed_at - self.holder.updated).whole_seconds().max(0);
        let left = (self.lapses_at() - self.observed_at).whole_seconds().max(0);
        write!(
            f,
            "another engine holds the engine lease of vault {}: {}, claimed at {} (version {}), last heartbeat at {} \
             ({ago} s before this claim); it lapses at {} (in about {left} s) unless renewed",
            self.vault,
            self.holder.holder,
            rfc3339(self.holder.created),
            self.holder.version,
            rfc3339(self.holder.updated),
            rfc3339(self.lapses_at()),
        )
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Why [`claim`] did not get the lease.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another live engine holds it.
    #[error("{0}")]
    Held(Box<HeldBy>),
    /// Key Vault refused or failed a call.
    #[error("cannot claim the engine lease (secret {LEASE_SECRET}): {0}")]
    Store(#[from] StoreError),
    /// Our claim did not reach a verdict in time, or vanished before it.
    #[error("cannot claim the engine lease (secret {LEASE_SECRET}): {0}")]
    Void(String),
    /// The timings cannot work.
    #[error("engine lease timings: {0}")]
    Timings(String),
}

/// Why the lease is not held (any more).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotHeld {
    /// No renewal succeeded in time; a later one may still restore the lease.
    #[error("the engine lease lapsed: its last successful renewal started {0:?} ago")]
    Lapsed(Duration),
    /// Ended for good: another engine may hold it now.
    #[error("the engine lease was lost: {0}")]
    Lost(String),
    /// Released by this process.
    #[error("the engine lease was released")]
    Released,
}

/// Until when the holder counts on the lease: both clocks must agree.
#[derive(Debug, Clone, Copy)]
struct Hold {
    renewed: Instant,
    until: Instant,
    until_wall: SystemTime,
}

impl Hold {
    fn from(started: Instant, started_wall: SystemTime, timings: &LeaseTimings) -> Self {
        let length = timings.ttl.saturating_sub(timings.margin);
        Self { renewed: started, until: started + length, until_wall: started_wall + length }
    }

    fn remaining(&self) -> Option<Duration> {
        let mono = self.until.checked_duration_since(Instant::now())?;
        let wall = self.until_wall.duration_since(SystemTime::now()).ok()?;
        Some(mono.min(wall)).filter(|d| !d.is_zero())
    }
}

#[derive(Debug)]
struct Shared {
    hold: Mutex<Hold>,
    ended: watch::Sender<Option<NotHeld>>,
}

impl Shared {
    fn check(&self) -> Result<Duration, NotHeld> {
        if let Some(ended) = self.ended.borrow().clone() {
            return Err(ended);
        }
        let hold = *self.hold.lock().expect("lease state");
        hold.remaining().ok_or_else(|| NotHeld::Lapsed(hold.renewed.elapsed()))
    }

    fn end(&self, why: NotHeld) {
        self.ended.send_if_modified(|ended| {
            let first = ended.is_none();
            if first {
                *ended = Some(why);
            }
            first
        });
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    vault: String,
    version: String,
    holder: HolderInfo,
    stop: watch::Sender<bool>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
}

/// The engine lease, held by this process. Cheap to clone; the heartbeat runs until
/// [`release`](Self::release) (or until every clone is dropped, which releases too).
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    inner: Arc<Inner>,
}

impl LeaseGuard {
    /// Whether this process may act as the vault's engine now. No I/O.
    pub fn is_held(&self) -> bool {
        self.inner.shared.check().is_ok()
    }

    /// `Ok` while held, else why not. No I/O.
    pub fn check(&self) -> Result<(), NotHeld> {
        self.inner.shared.check().map(|_| ())
    }

    /// How much longer the lease is held without another successful renewal; `None`
    /// when it is not held.
    pub fn held_for(&self) -> Option<Duration> {
        self.inner.shared.check().ok()
    }

    /// Completes when the lease has ended for good (lost or released); a lapse that a
    /// renewal may still repair does not count.
    pub async fn lost(&self) -> NotHeld {
        let mut ended = self.inner.shared.ended.subscribe();
        let why = match ended.wait_for(Option::is_some).await {
            Ok(why) => why.clone().expect("waited for Some"),
            Err(_) => NotHeld::Released,
        };
        why
    }

    /// The vault whose lease this is.
    pub fn vault(&self) -> &str {
        &self.inner.vault
    }

    /// This process's holder description.
    pub fn holder(&self) -> &HolderInfo {
        &self.inner.holder
    }

    /// The lease version this process wrote.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// Stops the heartbeat and disables our version, so a successor can claim at once.
    /// Idempotent; the guard reports not held from the start of the call.
    pub async fn release(&self) {
        self.inner.shared.end(NotHeld::Released);
        let _ = self.inner.stop.send(true);
        let task = self.inner.heartbeat.lock().expect("lease state").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Claims the engine lease of `store`'s vault for `command` (`serve`, `dev`, `rotate`)
/// and starts its heartbeat; refused with [`ClaimError::Held`] while another live engine
/// holds it — at once, without writing, when a holder's heartbeat is fresh. Takes at
/// least `timings.settle`.
pub async fn claim(
    store: Arc<dyn SecretStore>,
    command: &str,
    timings: LeaseTimings,
) -> Result<LeaseGuard, ClaimError> {
    timings.validate().map_err(ClaimError::Timings)?;
    refuse_if_freshly_held(store.as_ref(), &timings).await?;
    claim_by_writing(store, command, timings).await
}

/// A fresh heartbeat refuses the claim before it writes anything, so a crash-looping
/// replica or a cron `rotate` does not add a version per try. Judged on this host's
/// clock with half a TTL of slack — and not at all when a listed heartbeat is "from the
/// future" (this host's clock is behind): the written claim stays the authority.
/// [`claim`] is this, then [`claim_by_writing`]; public so that a standby
/// ([`crate::standby`]) can stop between the two, before it wrote anything.
pub async fn refuse_if_freshly_held(store: &dyn SecretStore, timings: &LeaseTimings) -> Result<(), ClaimError> {
    let versions = match store.list_versions(LEASE_SECRET).await {
        Ok(versions) => versions,
        Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(other) => return Err(other.into()),
    };
    let now = OffsetDateTime::now_utc();
    let clock_behind = versions.iter().any(|v| v.updated.is_some_and(|u| u > now + CLOCK_ALLOWANCE));
    match live_holder(&versions, now + timings.ttl / 2, timings.ttl).filter(|_| !clock_behind) {
        Some(holder) => Err(ClaimError::Held(Box::new(HeldBy {
            vault: store.vault_name().to_owned(),
            holder,
            observed_at: now,
            ttl: timings.ttl,
        }))),
        None => Ok(()),
    }
}

/// The authoritative claim: write our version, wait the settle delay, list, and hold if
/// ours is the oldest live claim. Public so that tests can race two of them directly.
pub async fn claim_by_writing(
    store: Arc<dyn SecretStore>,
    command: &str,
    timings: LeaseTimings,
) -> Result<LeaseGuard, ClaimError> {
    timings.validate().map_err(ClaimError::Timings)?;
    if timings.settle < SAFE_SETTLE {
        warn!(settle = ?timings.settle, "engine lease settle delay under {SAFE_SETTLE:?}: simultaneous claims are not excluded");
    }
    let holder = HolderInfo::this_process(command);
    let vault = store.vault_name().to_owned();
    let description = serde_json::json!({
        "holder": holder.holder_id,
        "command": holder.command,
        "host": holder.host,
        "pid": holder.pid,
        "kv_rotator": env!("CARGO_PKG_VERSION"),
        "note": "engine lease of kv-rotator: not a password; see docs/architecture.md",
    });
    let (started, started_wall) = (Instant::now(), SystemTime::now());
    let new = NewSecretVersion {
        value: SecretString::from(description.to_string()),
        tags: holder.tags(0),
        content_type: Some(LEASE_CONTENT_TYPE.to_owned()),
        expires: None,
        not_before: None,
    };
    let ours = store.set_secret(LEASE_SECRET, new).await?;
    let version = ours.version.clone();
    let verdict = async {
        let reference = ours
            .properties
            .created
            .ok_or_else(|| ClaimError::Void("the service returned no `created` attribute".to_owned()))?;
        tokio::time::sleep(timings.settle).await;
        let versions = store.list_versions(LEASE_SECRET).await?;
        let hold = Hold::from(started, started_wall, &timings);
        match live_holder(&versions, reference, timings.ttl) {
            Some(winner) if winner.version == version => match hold.remaining() {
                Some(_) => Ok((hold, reference)),
                None => Err(ClaimError::Void(format!(
                    "the verdict took {:?}, longer than the hold it would give; try again",
                    started.elapsed()
                ))),
            },
            Some(winner) => Err(ClaimError::Held(Box::new(HeldBy {
                vault: vault.clone(),
                holder: winner,
                observed_at: reference,
                ttl: timings.ttl,
            }))),
            None => Err(ClaimError::Void(format!("our claim (version {version}) was disabled before the verdict"))),
        }
    }
    .await;
    let (hold, reference) = match verdict {
        Ok(won) => won,
        Err(err) => {
            disable(store.as_ref(), &version, "losing claim").await;
            return Err(err);
        }
    };
    info!(vault = %vault, version = %version, holder = %holder, ttl = ?timings.ttl, "engine lease claimed");
    let (ended, _) = watch::channel(None);
    let shared = Arc::new(Shared { hold: Mutex::new(hold), ended });
    let (stop, stopped) = watch::channel(false);
    let heartbeat = Heartbeat {
        store,
        shared: shared.clone(),
        version: version.clone(),
        holder: holder.clone(),
        timings,
        last_updated: reference,
        renewals: 0,
    };
    let task = tokio::spawn(heartbeat.run(stopped));
    Ok(LeaseGuard {
        inner: Arc::new(Inner { shared, vault, version, holder, stop, heartbeat: Mutex::new(Some(task)) }),
    })
}

/// Disables every enabled lease version: breaks the lease of a holder known to be dead
/// (an operator's last resort; the crash suite's stand-in for waiting out the TTL).
/// Returns how many versions it disabled. Never use it while a holder may be alive.
pub async fn break_lease(store: &dyn SecretStore) -> Result<usize, StoreError> {
    let mut disabled = 0;
    for v in store.list_versions(LEASE_SECRET).await? {
        if let (true, Some(version)) = (v.enabled, v.version.as_deref()) {
            let update = PropertiesUpdate { enabled: Some(false), ..Default::default() };
            store.update_properties(LEASE_SECRET, Some(version), update).await?;
            disabled += 1;
        }
    }
    Ok(disabled)
}

/// Disables our own version (a lost claim, a release); failures only delay successors.
async fn disable(store: &dyn SecretStore, version: &str, why: &str) {
    for attempt in 1..=3 {
        let update = PropertiesUpdate { enabled: Some(false), ..Default::default() };
        match store.update_properties(LEASE_SECRET, Some(version), update).await {
            Ok(_) => {
                debug!(version, why, "engine lease version disabled");
                return;
            }
            Err(StoreError::NotFound { .. }) => return,
            Err(e) if attempt < 3 => debug!(error = %e, version, "disabling the engine lease version failed; retrying"),
            Err(e) => {
                warn!(error = %e, version, why, "cannot disable the engine lease version: successors wait for it to lapse")
            }
        }
    }
}

/// Why one renewal did not extend the hold.
enum RenewError {
    /// Retry soon.
    Failed(String),
    /// The lease has ended for good.
    Lost(String),
}

struct Heartbeat {
    store: Arc<dyn SecretStore>,
    shared: Arc<Shared>,
    version: String,
    holder: HolderInfo,
    timings: LeaseTimings,
    /// Our version's last `updated` stamp that we know of.
    last_updated: OffsetDateTime,
    renewals: u64,
}

impl Heartbeat {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let retry = (self.timings.renew_every / 3).max(Duration::from_millis(100));
        let mut delay = self.timings.renew_every;
        let mut lapse_logged = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A stop request, or every guard dropped.
                _ = stop.changed() => break,
            }
            let (started, started_wall) = (Instant::now(), SystemTime::now());
            match self.renew().await {
                Ok(()) => {
                    *self.shared.hold.lock().expect("lease state") = Hold::from(started, started_wall, &self.timings);
                    if std::mem::take(&mut lapse_logged) {
                        info!(version = %self.version, "engine lease renewed again after a lapse");
                    }
                    debug!(version = %self.version, renewals = self.renewals, "engine lease renewed");
                    delay = self.timings.renew_every;
                }
                Err(RenewError::Lost(why)) => {
                    error!(version = %self.version, reason = %why, "engine lease LOST: this process must not rotate any more");
                    self.shared.end(NotHeld::Lost(why));
                    disable(self.store.as_ref(), &self.version, "lost lease").await;
                    return;
                }
                Err(RenewError::Failed(why)) => {
                    let renewed = self.shared.hold.lock().expect("lease state").renewed;
                    if renewed.elapsed() >= self.timings.ttl {
                        let why = format!("no renewal succeeded for {:?} (last error: {why})", renewed.elapsed());
                        error!(version = %self.version, reason = %why, "engine lease LOST: this process must not rotate any more");
                        self.shared.end(NotHeld::Lost(why));
                        // Best effort: a successor then need not wait out the TTL.
                        disable(self.store.as_ref(), &self.version, "lost lease").await;
                        return;
                    }
                    if self.shared.check().is_err() && !lapse_logged {
                        lapse_logged = true;
                        error!(version = %self.version, error = %why, "engine lease LAPSED: renewals are failing; rotations wait until one succeeds");
                    } else {
                        warn!(version = %self.version, error = %why, "engine lease renewal failed; retrying");
                    }
                    delay = retry;
                }
            }
        }
        self.shared.end(NotHeld::Released);
        disable(self.store.as_ref(), &self.version, "release").await;
        info!(version = %self.version, "engine lease released");
    }

    async fn renew(&mut self) -> Result<(), RenewError> {
        self.renewals += 1;
        let update = PropertiesUpdate { tags: Some(self.holder.tags(self.renewals)), ..Default::default() };
        let ours = match self.store.update_properties(LEASE_SECRET, Some(&self.version), update).await {
            Ok(ours) => ours,
            Err(StoreError::NotFound { .. }) => {
                return Err(RenewError::Lost("our lease version (or the lease secret) was deleted".to_owned()))
            }
            Err(e) => return Err(RenewError::Failed(e.to_string())),
        };
        if !ours.enabled {
            return Err(RenewError::Lost("our lease version was disabled (lease broken by an operator?)".to_owned()));
        }
        let Some(updated) = ours.updated else {
            return Err(RenewError::Failed("the service returned no `updated` attribute".to_owned()));
        };
        let gap = updated - self.last_updated;
        self.last_updated = updated;
        if gap > self.timings.ttl {
            return Err(RenewError::Lost(format!(
                "{} s passed between two heartbeats, more than the TTL: another engine may have claimed meanwhile",
                gap.whole_seconds()
            )));
        }
        let versions = self.store.list_versions(LEASE_SECRET).await.map_err(|e| RenewError::Failed(e.to_string()))?;
        match live_holder(&versions, updated, self.timings.ttl) {
            Some(winner) if winner.version == self.version => Ok(()),
            Some(winner) => Err(RenewError::Lost(format!(
                "an older live claim exists: {} (version {}, claimed at {})",
                winner.holder,
                winner.version,
                rfc3339(winner.created)
            ))),
            None => Err(RenewError::Lost("our lease version is not live".to_owned())),
        }
    }
}

/// The engine asks before every attempt and before `set` and `finish`: a lapse that a
/// renewal may still repair makes it wait, a loss stops it.
impl crate::engine::EngineLease for LeaseGuard {
    fn state(&self) -> crate::engine::LeaseState {
        match self.check() {
            Ok(()) => crate::engine::LeaseState::Held,
            Err(NotHeld::Lapsed(_)) => crate::engine::LeaseState::Lapsed,
            Err(NotHeld::Lost(_) | NotHeld::Released) => crate::engine::LeaseState::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_from_hostile_tags_is_shown_escaped_and_clipped() {
        let tags = BTreeMap::from([
            (TAG_HOLDER.to_owned(), "id".to_owned()),
            (TAG_COMMAND.to_owned(), "serve\u{1b}[2K\rerror: nothing to see".to_owned()),
            (TAG_HOST.to_owned(), format!("h\u{202e}{}", "x".repeat(1000))),
        ]);
        let shown = HolderInfo::from_tags(&tags).to_string();
        assert!(!shown.chars().any(crate::logging::is_unsafe_char), "{shown}");
        assert!(shown.contains(r"serve\u{1b}[2K\rerror") && shown.contains("pid ?"), "{shown}");
        assert!(shown.len() < 400, "{} bytes", shown.len());
    }

    fn v(version: &str, created: i64, updated: i64, enabled: bool) -> SecretProperties {
        SecretProperties {
            name: LEASE_SECRET.to_owned(),
            version: Some(version.to_owned()),
            tags: HolderInfo {
                holder_id: version.to_owned(),
                command: "serve".into(),
                host: "h".into(),
                pid: "1".into(),
            }
            .tags(0),
            content_type: Some(LEASE_CONTENT_TYPE.to_owned()),
            enabled,
            created: Some(OffsetDateTime::from_unix_timestamp(created).unwrap()),
            updated: Some(OffsetDateTime::from_unix_timestamp(updated).unwrap()),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn the_oldest_live_version_holds_and_ties_go_to_the_smaller_id() {
        let versions = [v("b", 1000, 1000, true), v("a", 1000, 1000, true), v("c", 999, 1000, false)];
        assert_eq!(live_holder(&versions, at(1003), TTL).unwrap().version, "a");
        // The same verdict whatever the listing order.
        let reversed: Vec<_> = versions.iter().rev().cloned().collect();
        assert_eq!(live_holder(&reversed, at(1003), TTL).unwrap().version, "a");
    }

    #[test]
    fn a_version_lapses_a_ttl_plus_the_allowance_after_its_last_heartbeat() {
        let versions = [v("old", 900, 1000, true), v("new", 1050, 1050, true)];
        let lapse = 1000 + 60 + CLOCK_ALLOWANCE.as_secs() as i64;
        assert_eq!(live_holder(&versions, at(lapse), TTL).unwrap().version, "old");
        assert_eq!(live_holder(&versions, at(lapse + 1), TTL).unwrap().version, "new");
        assert!(live_holder(&versions, at(2000), TTL).is_none());
    }

    #[test]
    fn disabled_versions_never_hold() {
        let versions = [v("released", 900, 1000, false), v("next", 1001, 1001, true)];
        assert_eq!(live_holder(&versions, at(1004), TTL).unwrap().version, "next");
    }

    #[test]
    fn refusal_names_the_holder_its_heartbeat_and_its_lapse() {
        let holder = live_holder(&[v("abc", 1000, 1030, true)], at(1040), TTL).unwrap();
        let held = HeldBy { vault: "opsvault".into(), holder, observed_at: at(1040), ttl: TTL };
        let text = held.to_string();
        for part in
            ["vault opsvault", "`kv-rotator serve` (pid 1 on host h, holder id abc)", "10 s before", "in about 52 s"]
        {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
    }

    #[test]
    fn timings_are_checked() {
        assert!(LeaseTimings::default().validate().is_ok());
        assert!(LeaseTimings::with_ttl(Duration::from_secs(3)).validate().is_ok());
        assert!(LeaseTimings::with_ttl(Duration::from_secs(1)).validate().is_err());
        let t = LeaseTimings { renew_every: Duration::from_secs(55), ..LeaseTimings::default() };
        assert!(t.validate().is_err());
    }

    #[test]
    fn a_hold_ends_on_either_clock() {
        let t = LeaseTimings::default();
        let fresh = Hold::from(Instant::now(), SystemTime::now(), &t);
        assert!(fresh.remaining().unwrap() > Duration::from_secs(49));
        // A suspended host: the monotonic clock stood still, the wall clock did not.
        let suspended = Hold::from(Instant::now(), SystemTime::now() - Duration::from_secs(3600), &t);
        assert!(suspended.remaining().is_none());
    }
}
