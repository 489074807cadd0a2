//! A map of at most a fixed number of entries, for the caches kept per
//! agent (facts, verified credentials, what a replica heard): a fleet's
//! churn, agents registered and gone for good, never grows them past their
//! bound. Full, an insert evicts an arbitrary entry (the hasher's seed is
//! random: random replacement), which the next use of its key reloads.

use std::collections::HashMap;
use std::hash::Hash;

/// The bound the per-agent caches use: ten times the largest fleet
/// measured (docs/benchmarks.md), a few megabytes at most.
pub const AGENT_CACHE_ENTRIES: usize = 100_000;

/// A map that never holds more than its bound.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    bound: usize,
    map: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V> Default for BoundedMap<K, V> {
    fn default() -> Self {
        Self::new(AGENT_CACHE_ENTRIES)
    }
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map of at most `bound` entries (at least one).
    pub fn new(bound: usize) -> Self {
        Self {
            bound: bound.max(1),
            map: HashMap::new(),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Sets `key`, evicting another entry if the map is full.
    pub fn insert(&mut self, key: K, value: V) {
        if self.map.len() >= self.bound && !self.map.contains_key(&key) {
            // Any entry: the first in the map's (randomly seeded) order.
            if let Some(victim) = self.map.keys().next().cloned() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, value);
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// Keeps the entries `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_evicts_one_entry_per_new_key() {
        let mut m = BoundedMap::new(3);
        for i in 0..10 {
            m.insert(i, i * 10);
            assert!(m.len() <= 3, "{} entries", m.len());
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&9), Some(&90), "the newest entry is kept");
        // Setting a key it holds evicts nothing.
        let held = *[7, 8, 9].iter().find(|k| m.get(k).is_some()).unwrap();
        m.insert(held, 0);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&held), Some(&0));
    }
}
