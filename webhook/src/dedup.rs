//! [`RecentSet`]: a bounded, time-limited set of recently seen keys.
//!
//! The webhook keeps two: event ids (Event Grid redelivers an event whose
//! acknowledgement it did not see, with the same id) and (vault, secret, version)
//! triples (`SecretNearExpiry` and `SecretExpired` of one version, or two
//! subscriptions on one vault, ask for the same rotation). Both only save work: the
//! engine converges duplicate requests on one rotation anyway, so a key forgotten
//! early (capacity reached) costs a redundant fence read, never a wrong rotation.
//!
//! Keys are kept as 64-bit SipHash digests under a per-set random key: no allocation
//! per key, and nobody outside can aim two keys at one digest. The digests are already
//! uniform, so the map uses them as its hash as they are instead of hashing them again. Two distinct keys share
//! a digest with a chance of about `capacity / 2^64` per insert (~1e-15 at 20,000); the
//! cost would be one skipped request that the sweeper picks up later.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use nohash_hasher::BuildNoHashHasher;

/// Keys remembered for `ttl`, at most `capacity` of them (oldest forgotten first).
#[derive(Debug)]
pub struct RecentSet {
    hasher: RandomState,
    seen: HashMap<u64, Instant, BuildNoHashHasher<u64>>,
    order: VecDeque<(u64, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl RecentSet {
    /// An empty set, its room reserved up front so a full set never rehashes.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        // One more than `capacity`: `insert` adds before `expire` trims.
        let room = capacity.saturating_add(1).min(1 << 20);
        Self {
            hasher: RandomState::new(),
            seen: HashMap::with_capacity_and_hasher(room, BuildNoHashHasher::default()),
            order: VecDeque::with_capacity(room),
            ttl,
            capacity,
        }
    }

    /// The digest `key` is remembered under.
    pub fn digest<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Whether `key` was inserted less than `ttl` before `now`.
    pub fn contains<K: Hash + ?Sized>(&mut self, key: &K, now: Instant) -> bool {
        self.contains_digest(self.digest(key), now)
    }

    /// [`contains`](Self::contains) for a digest from [`digest`](Self::digest).
    pub fn contains_digest(&mut self, digest: u64, now: Instant) -> bool {
        self.expire(now);
        self.seen.get(&digest).is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Remembers `key` as seen at `now`.
    pub fn insert<K: Hash + ?Sized>(&mut self, key: &K, now: Instant) {
        self.insert_digest(self.digest(key), now);
    }

    /// [`insert`](Self::insert) for a digest from [`digest`](Self::digest).
    pub fn insert_digest(&mut self, digest: u64, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        self.seen.insert(digest, now);
        self.order.push_back((digest, now));
        self.expire(now);
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((digest, at)) = self.order.front() {
            let old = now.saturating_duration_since(*at) >= self.ttl;
            if !old && self.seen.len() <= self.capacity {
                break;
            }
            // A key inserted again later has a newer entry further back; keep it.
            if self.seen.get(digest) == Some(at) {
                self.seen.remove(digest);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_after_ttl() {
        let t0 = Instant::now();
        let mut set = RecentSet::new(Duration::from_secs(10), 100);
        set.insert("a", t0);
        assert!(set.contains("a", t0 + Duration::from_secs(9)));
        assert!(!set.contains("a", t0 + Duration::from_secs(10)));
        assert!(set.is_empty());
    }

    #[test]
    fn bounded_by_capacity_oldest_first() {
        let t0 = Instant::now();
        let mut set = RecentSet::new(Duration::from_secs(60), 3);
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            set.insert(key, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains("a", t0) && set.contains("b", t0) && set.contains("d", t0));
    }

    #[test]
    fn reinsert_refreshes() {
        let t0 = Instant::now();
        let mut set = RecentSet::new(Duration::from_secs(10), 100);
        set.insert("a", t0);
        set.insert("a", t0 + Duration::from_secs(8));
        assert!(set.contains("a", t0 + Duration::from_secs(15)));
        assert!(!set.contains("a", t0 + Duration::from_secs(18)));
    }

    #[test]
    fn digests_are_per_set() {
        let (a, b) = (RecentSet::new(Duration::from_secs(1), 1), RecentSet::new(Duration::from_secs(1), 1));
        assert_eq!(a.digest("x"), a.digest("x"));
        assert_ne!(a.digest("x"), b.digest("x"), "random keys per set");
    }
}
