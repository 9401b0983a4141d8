//! Hands each component its part of the restored checkpoint: state is restored only into a
//! component with the same id whose type and settings are unchanged; anything else is
//! dropped with a message saying which component and why.

use crate::state::Restored;

pub(crate) struct States {
    pipeline: String,
    checkpoint: u64,
    /// (component id, fingerprint, state); taken ones are removed.
    entries: Vec<(String, String, Vec<u8>)>,
}

impl States {
    pub(crate) fn new(restored: Option<Restored>, pipeline: &str) -> Self {
        let Some(restored) = restored else {
            return Self {
                pipeline: pipeline.to_string(),
                checkpoint: 0,
                entries: Vec::new(),
            };
        };
        let fingerprints = restored.manifest.components;
        let entries = restored
            .states
            .into_iter()
            .map(|(id, state)| {
                let fingerprint = fingerprints
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| c.fingerprint.clone())
                    .unwrap_or_default();
                (id, fingerprint, state)
            })
            .collect();
        Self {
            pipeline: pipeline.to_string(),
            checkpoint: restored.manifest.checkpoint_id,
            entries,
        }
    }

    /// The saved state of component `id`, if it still fits.
    pub(crate) fn take(&mut self, id: &str, fingerprint: &str) -> Option<Vec<u8>> {
        let index = self.entries.iter().position(|(saved, _, _)| saved == id)?;
        let (_, saved_fingerprint, state) = self.entries.swap_remove(index);
        if saved_fingerprint != fingerprint {
            tracing::warn!(pipeline = %self.pipeline, component = %id, checkpoint = self.checkpoint, "dropping the saved state of `{id}`: its type or settings changed since the checkpoint; it starts empty");
            return None;
        }
        tracing::info!(pipeline = %self.pipeline, component = %id, checkpoint = self.checkpoint, bytes = state.len(), "state restored");
        Some(state)
    }

    /// Says which saved states belong to components that no longer exist.
    pub(crate) fn report_unused(&self) {
        for (id, _, _) in &self.entries {
            tracing::warn!(pipeline = %self.pipeline, component = %id, checkpoint = self.checkpoint, "dropping the saved state of `{id}`: the pipeline no longer has that component");
        }
    }
}
