//! [`RecentSet`]: a bounded, time-limited set of recently seen keys.
//!
//! The webhook keeps two: event ids (Event Grid redelivers an event whose
//! acknowledgement it did not see, with the same id) and (vault, secret, version)
//! triples (`SecretNearExpiry` and `SecretExpired` of one version, or two
//! subscriptions on one vault, ask for the same rotation). Both only save work: the
//! engine converges duplicate requests on one rotation anyway, so a key forgotten
//! early (capacity reached) costs a redundant fence read, never a wrong rotation.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys remembered for `ttl`, at most `capacity` of them (oldest forgotten first).
#[derive(Debug)]
pub struct RecentSet<K> {
    seen: HashMap<K, Instant>,
    order: VecDeque<(K, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> RecentSet<K> {
    /// An empty set, its room reserved up front so a full set never rehashes.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        // One more than `capacity`: `insert` adds before `expire` trims.
        let room = capacity.saturating_add(1).min(1 << 20);
        Self { seen: HashMap::with_capacity(room), order: VecDeque::with_capacity(room), ttl, capacity }
    }

    /// Whether `key` was inserted less than `ttl` before `now`.
    pub fn contains(&mut self, key: &K, now: Instant) -> bool {
        self.expire(now);
        self.seen.get(key).is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Remembers `key` as seen at `now`.
    pub fn insert(&mut self, key: K, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        self.seen.insert(key.clone(), now);
        self.order.push_back((key, now));
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
        while let Some((key, at)) = self.order.front() {
            let old = now.saturating_duration_since(*at) >= self.ttl;
            if !old && self.seen.len() <= self.capacity {
                break;
            }
            // A key inserted again later has a newer entry further back; keep it.
            if self.seen.get(key) == Some(at) {
                self.seen.remove(key);
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
        assert!(set.contains(&"a", t0 + Duration::from_secs(9)));
        assert!(!set.contains(&"a", t0 + Duration::from_secs(10)));
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
        assert!(!set.contains(&"a", t0) && set.contains(&"b", t0) && set.contains(&"d", t0));
    }

    #[test]
    fn reinsert_refreshes() {
        let t0 = Instant::now();
        let mut set = RecentSet::new(Duration::from_secs(10), 100);
        set.insert("a", t0);
        set.insert("a", t0 + Duration::from_secs(8));
        assert!(set.contains(&"a", t0 + Duration::from_secs(15)));
        assert!(!set.contains(&"a", t0 + Duration::from_secs(18)));
    }
}
