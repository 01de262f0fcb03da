//! A small bounded map for values that are cheap to rebuild but worth sharing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

/// At most `capacity` entries; inserting into a full map forgets the oldest entry.
pub(crate) struct Bounded<K, V> {
    capacity: usize,
    inner: Mutex<Entries<K, V>>,
}

// Only the size: the entries (client configurations) would flood a log line.
impl<K, V> std::fmt::Debug for Bounded<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.inner.lock().map(|e| e.map.len()).unwrap_or_default();
        f.debug_struct("Bounded")
            .field("capacity", &self.capacity)
            .field("len", &len)
            .finish()
    }
}

struct Entries<K, V> {
    map: HashMap<K, V>,
    /// Keys in insertion order, oldest first.
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    /// An empty map holding at most `capacity` (at least one) entries.
    pub(crate) fn new(capacity: usize) -> Bounded<K, V> {
        Bounded {
            capacity: capacity.max(1),
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The value kept for `key`, or the one `make` builds (then kept).
    ///
    /// `make` runs without the lock held; when two callers race on a new key, the
    /// first value stored wins and both get it.
    pub(crate) fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.lock().map.get(key) {
            return v.clone();
        }
        let value = make();
        let mut entries = self.lock();
        if let Some(v) = entries.map.get(key) {
            return v.clone();
        }
        while entries.map.len() >= self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.map.remove(&oldest);
        }
        entries.map.insert(key.clone(), value.clone());
        entries.order.push_back(key.clone());
        value
    }

    /// How many entries are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // The map stays consistent even if a holder panicked: every change is one step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_and_forgets_the_oldest() {
        let cache = Bounded::new(2);
        let mut built = 0;
        let mut get = |k: &str| {
            cache.get_or_insert_with(&k.to_string(), || {
                built += 1;
                format!("{k}{built}")
            })
        };
        // (key, value returned): a value is built again only after eviction.
        let steps = [
            ("a", "a1"),
            ("a", "a1"),
            ("b", "b2"),
            ("a", "a1"),
            ("c", "c3"),
            ("b", "b2"),
            ("a", "a4"),
            ("c", "c3"),
            ("b", "b5"),
        ];
        for (i, (key, want)) in steps.into_iter().enumerate() {
            assert_eq!(get(key), want, "step {i}");
        }
        assert_eq!(cache.len(), 2);
    }
}
