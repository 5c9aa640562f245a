//! Per-secret mutual exclusion within one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Hands out one async lock per key; entries are dropped when no one holds or waits.
#[derive(Debug, Default, Clone)]
pub struct KeyedLocks {
    inner: Arc<Mutex<HashMap<String, Arc<AsyncMutex<()>>>>>,
}

/// Holds a key's lock; releases it (and forgets the key if unused) on drop.
#[derive(Debug)]
pub struct KeyGuard {
    _guard: OwnedMutexGuard<()>,
    key: String,
    locks: KeyedLocks,
}

impl KeyedLocks {
    /// The lock of `key` if it is free now.
    pub fn try_lock(&self, key: &str) -> Option<KeyGuard> {
        let mutex = {
            let mut map = self.inner.lock().expect("lock table poisoned");
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = mutex.try_lock_owned().ok()?;
        Some(KeyGuard { _guard: guard, key: key.to_owned(), locks: self.clone() })
    }

    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard {
        let mutex = {
            let mut map = self.inner.lock().expect("lock table poisoned");
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyGuard { _guard: guard, key: key.to_owned(), locks: self.clone() }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut map = self.locks.inner.lock().expect("lock table poisoned");
        // Two references: the map's and the guard's own mutex; no one else waits.
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) <= 2) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_exclusive_other_keys_are_not() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        let _b = tokio::time::timeout(Duration::from_millis(100), locks.lock("b")).await.expect("other key blocked");
        assert!(tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await.is_err());
        drop(a);
        let _a2 = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await.expect("released");
    }
}
