//! Operator and source state in checkpoints: the encoding components use for their snapshots,
//! the checksummed file format, the manifest that marks a checkpoint complete, and the store
//! (a local directory or an object-store bucket) that writes, finds, verifies and cleans
//! them up.

mod codec;
mod manifest;
mod store;

pub use codec::{decode, encode, restore, snapshot, StateCodecError};
pub use manifest::{ComponentState, Manifest, FORMAT_VERSION};
pub use store::{open_store, CheckpointStore, Restored, StateError};
