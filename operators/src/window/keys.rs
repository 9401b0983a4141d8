//! Interns the key of each row (the values of the key columns) as a small integer id, with one
//! hash and one probe per row and no allocation for keys already seen.

use std::hash::{BuildHasher, Hasher};

use arrow::array::{Array, StringArray};
use hashbrown::HashTable;

pub type KeyId = u32;

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
    pub fn intern_rows(&mut self, columns: &[&StringArray], rows: usize, ids: &mut Vec<KeyId>) {
        ids.clear();
        ids.reserve(rows);
        for row in 0..rows {
            ids.push(self.intern_row(columns, row));
        }
    }

    #[inline]
    fn intern_row(&mut self, columns: &[&StringArray], row: usize) -> KeyId {
        let hash = self.hash_values(columns.iter().map(|column| row_value(column, row)));
        let values = &self.values;
        let found = self.table.find(hash, |&id| {
            values[id as usize]
                .iter()
                .zip(columns)
                .all(|(stored, column)| stored.as_deref() == row_value(column, row))
        });
        if let Some(&id) = found {
            return id;
        }
        let id = self.values.len() as KeyId;
        self.values.push(
            columns
                .iter()
                .map(|c| row_value(c, row).map(Box::from))
                .collect(),
        );
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, id, |&other| hashes[other as usize]);
        id
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
}
