//! Interns the key of each row (the values of the key columns) as a small integer id, with one
//! hash and one probe per row and no allocation for keys already seen.

use std::hash::{BuildHasher, Hasher};

use arrow::array::{Array, StringArray};
use hashbrown::HashTable;

pub type KeyId = u32;

/// The key id of a row left out because the key cap was reached (`on_max_keys = "drop"`).
pub const DROPPED: KeyId = KeyId::MAX;

#[derive(Default)]
pub struct KeyInterner {
    table: HashTable<KeyId>,
    hashes: Vec<u64>,
    values: Vec<Box<[Option<Box<str>>]>>,
    state: foldhash::fast::FixedState,
}

#[inline]
fn row_value(column: &StringArray, row: usize) -> Option<&str> {
    if column.is_null(row) {
        None
    } else {
        Some(column.value(row))
    }
}

impl KeyInterner {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The key columns' values of a key id.
    pub fn values(&self, id: KeyId) -> &[Option<Box<str>>] {
        &self.values[id as usize]
    }

    /// Every key's values, in id order (for checkpoints).
    pub fn all_values(&self) -> impl Iterator<Item = &[Option<Box<str>>]> {
        self.values.iter().map(|v| &v[..])
    }

    /// Rebuilds an interner whose ids are the positions of `keys` (from `all_values`).
    pub fn from_values(keys: Vec<Vec<Option<String>>>) -> Self {
        let mut interner = Self::default();
        for key in keys {
            let values: Box<[Option<Box<str>>]> = key
                .into_iter()
                .map(|v| v.map(String::into_boxed_str))
                .collect();
            let hash = interner.hash_values(values.iter().map(|v| v.as_deref()));
            let id = interner.values.len() as KeyId;
            interner.values.push(values);
            interner.hashes.push(hash);
            let hashes = &interner.hashes;
            interner
                .table
                .insert_unique(hash, id, |&other| hashes[other as usize]);
        }
        interner
    }

    fn hash_values<'v>(&self, values: impl Iterator<Item = Option<&'v str>>) -> u64 {
        let mut hasher = self.state.build_hasher();
        for value in values {
            match value {
                Some(value) => {
                    hasher.write_u8(1);
                    hasher.write(value.as_bytes());
                    hasher.write_u8(0xff);
                }
                None => hasher.write_u8(0),
            }
        }
        hasher.finish()
    }

    /// Appends the key id of each of `rows` rows to `ids`.
    #[cfg(test)]
    pub fn intern_rows(&mut self, columns: &[&StringArray], rows: usize, ids: &mut Vec<KeyId>) {
        self.intern_rows_capped(columns, rows, ids, usize::MAX, None);
    }

    /// Appends the key id of each of `rows` rows to `ids`, with at most `cap` keys: a row with a new key
    /// past the cap gets `overflow` (the `other` key), or [`DROPPED`] without one. Returns how
    /// many rows were over the cap.
    pub fn intern_rows_capped(
        &mut self,
        columns: &[&StringArray],
        rows: usize,
        ids: &mut Vec<KeyId>,
        cap: usize,
        overflow: Option<KeyId>,
    ) -> u64 {
        ids.clear();
        ids.reserve(rows);
        let mut over = 0;
        for row in 0..rows {
            let id = self.intern_row(columns, row, cap).unwrap_or_else(|| {
                over += 1;
                overflow.unwrap_or(DROPPED)
            });
            ids.push(id);
        }
        over
    }

    /// The id of a key given by its values, interned whatever the cap (the `other` key).
    pub fn intern_values(&mut self, values: &[Option<&str>]) -> KeyId {
        let hash = self.hash_values(values.iter().copied());
        let stored = &self.values;
        if let Some(&id) = self.table.find(hash, |&id| {
            stored[id as usize]
                .iter()
                .zip(values)
                .all(|(stored, value)| stored.as_deref() == *value)
        }) {
            return id;
        }
        self.push(values.iter().map(|v| v.map(Box::from)).collect(), hash)
    }

    fn push(&mut self, values: Box<[Option<Box<str>>]>, hash: u64) -> KeyId {
        let id = self.values.len() as KeyId;
        self.values.push(values);
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, id, |&other| hashes[other as usize]);
        id
    }

    #[inline]
    fn intern_row(&mut self, columns: &[&StringArray], row: usize, cap: usize) -> Option<KeyId> {
        let hash = self.hash_values(columns.iter().map(|column| row_value(column, row)));
        let values = &self.values;
        let found = self.table.find(hash, |&id| {
            values[id as usize]
                .iter()
                .zip(columns)
                .all(|(stored, column)| stored.as_deref() == row_value(column, row))
        });
        if let Some(&id) = found {
            return Some(id);
        }
        if self.values.len() >= cap {
            return None;
        }
        let values = columns
            .iter()
            .map(|c| row_value(c, row).map(Box::from))
            .collect();
        Some(self.push(values, hash))
    }

    /// Keeps only the keys `live` says are still used, renumbered in their order; returns the
    /// new id of each old one (`None` for those dropped).
    pub fn compact(&mut self, live: &[bool]) -> Vec<Option<KeyId>> {
        let mut kept = KeyInterner {
            state: self.state.clone(),
            ..KeyInterner::default()
        };
        let mut mapping = Vec::with_capacity(self.values.len());
        for (id, values) in std::mem::take(&mut self.values).into_iter().enumerate() {
            if live.get(id).copied().unwrap_or(false) {
                let hash = self.hashes[id];
                mapping.push(Some(kept.push(values, hash)));
            } else {
                mapping.push(None);
            }
        }
        *self = kept;
        mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_share_an_id_and_nulls_are_distinct_from_empty() {
        let models = StringArray::from(vec![Some("a"), Some("b"), Some("a"), None, Some("")]);
        let endpoints = StringArray::from(vec![
            Some("/x"),
            Some("/x"),
            Some("/x"),
            Some("/x"),
            Some("/x"),
        ]);
        let mut interner = KeyInterner::default();
        let mut ids = Vec::new();
        interner.intern_rows(&[&models, &endpoints], 5, &mut ids);
        assert_eq!(ids, vec![0, 1, 0, 2, 3]);
        assert_eq!(interner.values(2)[0], None);
        assert_eq!(interner.values(3)[0].as_deref(), Some(""));
        // A second batch reuses ids.
        interner.intern_rows(&[&models, &endpoints], 2, &mut ids);
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(interner.len(), 4);
        // Rebuilt from its values (as a checkpoint does), it gives the same ids.
        let saved: Vec<Vec<Option<String>>> = interner
            .all_values()
            .map(|key| key.iter().map(|v| v.as_deref().map(String::from)).collect())
            .collect();
        let mut rebuilt = KeyInterner::from_values(saved);
        rebuilt.intern_rows(&[&models, &endpoints], 5, &mut ids);
        assert_eq!(ids, vec![0, 1, 0, 2, 3]);
        assert_eq!(rebuilt.len(), 4);
    }

    #[test]
    fn a_cap_sends_new_keys_to_the_overflow_and_compaction_keeps_the_live_ones() {
        let models = StringArray::from(vec!["a", "b", "c", "a", "d"]);
        let mut interner = KeyInterner::default();
        let other = interner.intern_values(&[Some("other")]);
        let mut ids = Vec::new();
        let over = interner.intern_rows_capped(&[&models], 5, &mut ids, 3, Some(other));
        assert_eq!(ids, vec![1, 2, other, 1, other]);
        assert_eq!(over, 2);
        let over = interner.intern_rows_capped(&[&models], 5, &mut ids, 3, None);
        assert_eq!(ids, vec![1, 2, DROPPED, 1, DROPPED]);
        assert_eq!(over, 2);
        let mapping = interner.compact(&[true, false, true]);
        assert_eq!(mapping, vec![Some(0), None, Some(1)]);
        assert_eq!(interner.len(), 2);
        interner.intern_rows(&[&models], 3, &mut ids);
        assert_eq!(ids, vec![2, 1, 3], "b is still known, a and c are new");
        assert_eq!(interner.intern_values(&[Some("other")]), 0);
    }
}
