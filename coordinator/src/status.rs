//! A job's status as the coordinator keeps it in etcd (`states/{job}`).

use serde::{Deserialize, Serialize};

use crate::commit::JobState;
use crate::summary::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Cancel asked for: workers stop its attempts; the coordinator ends it once none runs.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Cancelling => "cancelling",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }
}

impl From<JobState> for Phase {
    fn from(s: JobState) -> Phase {
        match s {
            JobState::Succeeded => Phase::Succeeded,
            JobState::Failed => Phase::Failed,
            JobState::Cancelled => Phase::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub phase: Phase,
    pub shards: u64,
    pub created_ms: i64,
    #[serde(default)]
    pub finished_ms: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    /// The final summary, once finished.
    #[serde(default)]
    pub summary: Option<Summary>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
