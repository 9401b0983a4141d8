//! The manifest of one checkpoint: written last, so a checkpoint without one is incomplete.
//! It lists every component's state file with its size and CRC-32, and each component's
//! configuration fingerprint, so a restart can tell state that still fits from state whose
//! component changed.

use serde::{Deserialize, Serialize};

/// The version of the checkpoint layout and state file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub pipeline: String,
    pub checkpoint_id: u64,
    /// Wall clock when the checkpoint completed (µs since the epoch).
    pub completed_at_micros: i64,
    pub components: Vec<ComponentState>,
}

/// One component's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentState {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Hash of the component's type and settings when the state was taken.
    pub fingerprint: String,
    /// The state file, relative to the checkpoint's directory.
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
}
