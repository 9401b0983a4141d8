//! Where checkpoints live: `<location>/<pipeline>/chk-<id>/`, one `<component>.state` file per
//! stateful component and `_manifest.json` written last. Every state file carries a header
//! (magic, format version, length, CRC-32) checked again against the manifest on restore, so
//! a torn, truncated or altered checkpoint is found and the previous complete one used instead.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::{ComponentState, Manifest, FORMAT_VERSION};

const MAGIC: &[u8; 4] = b"PLST";
const HEADER_LEN: usize = 4 + 4 + 4 + 8;
const MANIFEST: &str = "_manifest.json";
const PREFIX: &str = "chk-";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("checkpoint store {location}: {message}")]
    Store { location: String, message: String },
    #[error("{file}: {message}")]
    Corrupt { file: String, message: String },
}

/// Opens the object store and the prefix inside it for a location: a directory (created if
/// missing), `file:///dir`, or `s3://bucket/prefix` (credentials and endpoint from the standard
/// `AWS_*` environment variables).
pub fn open_store(location: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    if location.starts_with("s3://") {
        let url =
            url::Url::parse(location).map_err(|e| format!("invalid URL {location:?}: {e}"))?;
        let bucket = url
            .host_str()
            .ok_or_else(|| format!("{location:?} names no bucket"))?;
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| format!("cannot open {location}: {e}"))?;
        let prefix = ObjectPath::from(url.path().trim_start_matches('/'));
        return Ok((Arc::new(store), prefix));
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    if local.contains("://") {
        return Err(format!(
            "unsupported storage URL {location:?}: use a directory or s3://bucket/prefix"
        ));
    }
    std::fs::create_dir_all(local).map_err(|e| format!("cannot create directory {local}: {e}"))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(local)
        .map_err(|e| format!("cannot open directory {local}: {e}"))?;
    Ok((Arc::new(store), ObjectPath::from("")))
}

/// The newest complete checkpoint, read and verified.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// Component id → its state bytes.
    pub states: Vec<(String, Vec<u8>)>,
    /// The highest checkpoint id present (complete or not); new checkpoints number after it.
    pub highest_id: u64,
}

/// The checkpoints of one pipeline.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    location: String,
    pipeline: String,
    /// The pipeline's directory when the store is a local one.
    local_dir: Option<std::path::PathBuf>,
    retain: usize,
}

fn checkpoint_dir(id: u64) -> String {
    format!("{PREFIX}{id:020}")
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Checks a state file's header and checksum; returns the payload.
fn unframe(bytes: &[u8], expected: &ComponentState) -> Result<Vec<u8>, String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err("not a state file (bad header)".into());
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(4);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        ));
    }
    let crc = word(8);
    let mut length = [0u8; 8];
    length.copy_from_slice(&bytes[12..20]);
    let length = u64::from_le_bytes(length);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != length || length != expected.bytes {
        return Err(format!(
            "truncated: {} bytes of state, the header says {length} and the manifest {}",
            payload.len(),
            expected.bytes
        ));
    }
    let actual = crc32fast::hash(payload);
    if actual != crc || crc != expected.crc32 {
        return Err(format!(
            "checksum mismatch (file {actual:08x}, header {crc:08x}, manifest {:08x})",
            expected.crc32
        ));
    }
    Ok(payload.to_vec())
}

impl CheckpointStore {
    /// Opens the checkpoints of `pipeline` under `location`, keeping the newest `retain`
    /// complete checkpoints when cleaning up.
    pub fn open(location: &str, pipeline: &str, retain: usize) -> Result<Self, StateError> {
        let (store, prefix) = open_store(location).map_err(|message| StateError::Store {
            location: location.to_string(),
            message,
        })?;
        let root = prefix.join(pipeline);
        let local = location.strip_prefix("file://").unwrap_or(location);
        let local_dir =
            (!local.contains("://")).then(|| std::path::Path::new(local).join(pipeline));
        Ok(Self {
            store,
            root,
            location: location.trim_end_matches('/').to_string(),
            pipeline: pipeline.to_string(),
            local_dir,
            retain: retain.max(1),
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> StateError {
        StateError::Store {
            location: self.location.clone(),
            message: message.to_string(),
        }
    }

    /// A readable name of a file in the store, for messages.
    pub fn describe(&self, id: u64, file: &str) -> String {
        format!(
            "{}/{}/{}/{file}",
            self.location,
            self.pipeline,
            checkpoint_dir(id)
        )
    }

    fn path(&self, id: u64, file: &str) -> ObjectPath {
        self.root.clone().join(checkpoint_dir(id)).join(file)
    }

    /// Writes one component's state for checkpoint `id`.
    pub async fn put_state(
        &self,
        id: u64,
        component: &str,
        type_name: &str,
        fingerprint: &str,
        payload: &[u8],
    ) -> Result<ComponentState, StateError> {
        let file = format!("{component}.state");
        let location = self.path(id, &file);
        self.store
            .put(&location, PutPayload::from(Bytes::from(frame(payload))))
            .await
            .map_err(|e| self.error(format!("writing {location}: {e}")))?;
        Ok(ComponentState {
            id: component.to_string(),
            type_name: type_name.to_string(),
            fingerprint: fingerprint.to_string(),
            file,
            bytes: payload.len() as u64,
            crc32: crc32fast::hash(payload),
        })
    }

    /// Writes the manifest, which makes checkpoint `manifest.checkpoint_id` complete.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StateError> {
        let location = self.path(manifest.checkpoint_id, MANIFEST);
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| self.error(e))?;
        self.store
            .put(&location, PutPayload::from(Bytes::from(text)))
            .await
            .map_err(|e| self.error(format!("writing {location}: {e}")))?;
        Ok(())
    }

    /// The checkpoint ids present, complete or not, newest first.
    async fn ids(&self) -> Result<Vec<u64>, StateError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| self.error(format!("listing checkpoints: {e}")));
        let listing = match listing {
            Ok(listing) => listing,
            // A store that has never been written to has nothing to list.
            Err(_) if self.local_dir.as_ref().is_some_and(|dir| !dir.exists()) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let mut ids: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix(PREFIX)?.parse().ok())
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    async fn read(&self, location: &ObjectPath) -> Result<Option<Bytes>, String> {
        match self.store.get(location).await {
            Ok(result) => result.bytes().await.map(Some).map_err(|e| e.to_string()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads and verifies one checkpoint.
    async fn load(&self, id: u64) -> Result<Restored, StateError> {
        let corrupt = |file: &str, message: String| StateError::Corrupt {
            file: self.describe(id, file),
            message,
        };
        let manifest = self
            .read(&self.path(id, MANIFEST))
            .await
            .map_err(|e| corrupt(MANIFEST, e))?
            .ok_or_else(|| {
                corrupt(
                    MANIFEST,
                    "missing: the checkpoint never completed (a crash while it was written)".into(),
                )
            })?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| corrupt(MANIFEST, format!("unreadable: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(corrupt(
                MANIFEST,
                format!(
                    "format version {}; this build reads version {FORMAT_VERSION}",
                    manifest.format_version
                ),
            ));
        }
        let mut states = Vec::with_capacity(manifest.components.len());
        for component in &manifest.components {
            let bytes = self
                .read(&self.path(id, &component.file))
                .await
                .map_err(|e| corrupt(&component.file, e))?
                .ok_or_else(|| corrupt(&component.file, "missing".into()))?;
            let payload = unframe(&bytes, component).map_err(|e| corrupt(&component.file, e))?;
            states.push((component.id.clone(), payload));
        }
        Ok(Restored {
            manifest,
            states,
            highest_id: id,
        })
    }

    /// The newest complete, intact checkpoint. Incomplete or damaged ones are skipped with a
    /// warning naming the file at fault. `Ok(None)` when there is none (a first start).
    pub async fn newest(&self) -> Result<Option<Restored>, StateError> {
        let ids = self.ids().await?;
        let highest = ids.first().copied().unwrap_or(0);
        for id in ids {
            match self.load(id).await {
                Ok(mut restored) => {
                    restored.highest_id = highest;
                    return Ok(Some(restored));
                }
                Err(error) => {
                    tracing::warn!(pipeline = %self.pipeline, checkpoint = id, %error, "skipping checkpoint; trying the one before it");
                }
            }
        }
        Ok(None)
    }

    /// Deletes every checkpoint older than the newest `retain` complete ones, including
    /// incomplete ones older than the newest complete checkpoint. Returns how many went.
    pub async fn clean(&self, newest_complete: u64) -> Result<usize, StateError> {
        let ids = self.ids().await?;
        let mut kept_complete = 0;
        let mut removed = 0;
        for id in ids {
            if id > newest_complete {
                continue; // in progress
            }
            let complete = matches!(self.read(&self.path(id, MANIFEST)).await, Ok(Some(_)));
            if complete && kept_complete < self.retain {
                kept_complete += 1;
                continue;
            }
            self.remove(id).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes checkpoints newer than `id` (left by a run that crashed mid-checkpoint).
    pub async fn remove_newer_than(&self, id: u64) -> Result<(), StateError> {
        for newer in self.ids().await?.into_iter().filter(|&n| n > id) {
            self.remove(newer).await?;
        }
        Ok(())
    }

    async fn remove(&self, id: u64) -> Result<(), StateError> {
        let prefix = self.root.clone().join(checkpoint_dir(id));
        let files: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing {prefix}: {e}")))?;
        for file in files {
            match self.store.delete(&file).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(format!("deleting {file}: {e}"))),
            }
        }
        if let Some(dir) = &self.local_dir {
            // A local store leaves the emptied directory behind.
            let _ = std::fs::remove_dir(dir.join(checkpoint_dir(id)));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
