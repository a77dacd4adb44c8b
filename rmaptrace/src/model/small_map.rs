//! A map kept as a sorted vector, for the few keys a mapping has (its paths,
//! its access kinds): a BTreeMap allocates a node of eleven slots for one entry,
//! and rmaptrace holds one such map per mapping (200k mappings: over 100 MiB).
use serde::{ser::SerializeMap, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    /// The value at `key`, inserted as `V::default()` if absent.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let at = match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => at,
            Err(at) => {
                self.grow_by_one();
                self.0.insert(at, (key, V::default()));
                at
            }
        };
        &mut self.0[at].1
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0
            .binary_search_by(|(k, _)| k.borrow().cmp(key))
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|at| &mut self.0[at].1)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|at| self.0.remove(at).1)
    }

    pub fn insert(&mut self, key: K, value: V) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => {
                self.grow_by_one();
                self.0.insert(at, (key, value))
            }
        }
    }

    /// Room for one more entry and no more: a Vec's first growth makes room
    /// for four, and most of these maps hold one or two.
    fn grow_by_one(&mut self) {
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact(1);
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = SmallMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// Serialised as a JSON object, like the BTreeMap it replaces.
impl<K: Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut m: SmallMap<&str, u64> = SmallMap::default();
        *m.entry_or_default("do_wp_page") += 2;
        *m.entry_or_default("do_anonymous_page") += 1;
        *m.entry_or_default("do_wp_page") += 3;
        assert_eq!(m.get("do_wp_page"), Some(&5));
        assert_eq!(m.get("filemap_fault"), None);
        let keys: Vec<_> = m.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["do_anonymous_page", "do_wp_page"]);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"do_anonymous_page":1,"do_wp_page":5}"#
        );
        assert_eq!(m.remove(&"do_anonymous_page"), Some(1));
        assert_eq!(m.values().sum::<u64>(), 5);
        let from: SmallMap<u8, u8> = [(3, 1), (1, 2), (3, 4)].into_iter().collect();
        assert_eq!(from.iter().collect::<Vec<_>>(), [(&1, &2), (&3, &4)]);
    }
}
