//! Hashing for maps keyed by client-chosen names (rooms, ids): ahash with
//! random keys, drawn once per process, so a map carries no hasher state of
//! its own (an idle connection or an empty room holds many small maps).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Builds ahash hashers from the process's random keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastHash;

impl BuildHasher for FastHash {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = HashMap<K, V, FastHash>;
/// A `HashSet` with [`FastHash`].
pub type FastSet<K> = HashSet<K, FastHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_consistently_within_the_process() {
        let mut m: FastMap<String, u32> = FastMap::default();
        m.insert("chat:1".into(), 1);
        assert_eq!(m.get("chat:1"), Some(&1));
        assert_eq!(FastHash.hash_one("x"), FastHash.hash_one("x"));
        assert_eq!(
            std::mem::size_of::<FastMap<String, u32>>(),
            std::mem::size_of::<HashMap<String, u32, ()>>()
        );
    }
}
