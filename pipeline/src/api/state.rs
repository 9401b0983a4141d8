//! What every handler sees: the live state, the keys, the settings, and each running
//! pipeline's graph, metrics and run state.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine::metrics::MetricsRegistry;
use engine::runtime::TopologyNode;
use serde::Serialize;

use super::auth::KeyStore;
use super::live::LiveState;
use super::settings::ApiSettings;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    Running,
    Finished,
    Failed { error: String },
}

/// One pipeline as the API shows it.
pub struct PipelineInfo {
    pub name: String,
    pub topology: Vec<TopologyNode>,
    pub metrics: Arc<MetricsRegistry>,
    pub state: Arc<Mutex<RunState>>,
}

impl PipelineInfo {
    pub fn run_state(&self) -> RunState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct AppState {
    pub live: Arc<LiveState>,
    pub keys: Arc<KeyStore>,
    pub settings: ApiSettings,
    pub pipelines: Vec<PipelineInfo>,
    pub started: Instant,
    /// One permit per query worker allowed to run (`api.query_concurrency`).
    pub query_slots: tokio::sync::Semaphore,
}
