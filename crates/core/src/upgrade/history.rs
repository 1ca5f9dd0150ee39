//! Upgrade history: what `ferry status` shows of past upgrades. It travels
//! in the handover blob, so the whole lineage of a server survives.

use serde::{Deserialize, Serialize};

use super::gaps::GapSummary;

/// Upgrades remembered.
pub const MAX_HISTORY: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    pub unix_ms: u64,
    pub old_pid: u32,
    pub old_version: String,
    /// Pid of the new process (even when it was rolled back).
    pub new_pid: Option<u32>,
    pub new_version: Option<String>,
    pub binary: String,
    /// The total handover time, µs: from the first pause (the first
    /// accept loop stopped) to every session resumed in the new process.
    pub pause_gap_us: Option<u64>,
    pub sessions_moved: usize,
    /// Per-session pause gaps of a successful upgrade.
    #[serde(default)]
    pub session_gap: Option<GapSummary>,
    /// `ok`, or `rolled back: <reason>` / `failed: <reason>`.
    pub outcome: String,
}

/// Appends a record, keeping the newest [`MAX_HISTORY`].
pub fn push(history: &mut Vec<UpgradeRecord>, record: UpgradeRecord) {
    history.push(record);
    if history.len() > MAX_HISTORY {
        let excess = history.len() - MAX_HISTORY;
        history.drain(..excess);
    }
}
