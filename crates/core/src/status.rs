//! The shape of `ferry status --json`: what the admin socket answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registry::TransferKind;
use crate::upgrade::history::UpgradeRecord;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    pub started_unix_ms: u64,
    pub uptime_secs: u64,
    pub data_dir: String,
    pub root: String,
    /// Service name → bound address, as in `listen.json`.
    pub listeners: BTreeMap<String, String>,
    pub connections: usize,
    pub sessions: Vec<SessionStatus>,
    pub transfers: Vec<TransferStatus>,
    pub recent_transfers: Vec<FinishedTransfer>,
    pub counters: CounterStatus,
    /// Past live upgrades, oldest first (carried across upgrades).
    #[serde(default)]
    pub upgrades: Vec<UpgradeRecord>,
    /// Service name → what that service reports of itself
    /// ([`crate::Service::status`]), for services that report anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    pub service: String,
    pub peer: String,
    pub started_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferStatus {
    pub session: u64,
    pub kind: TransferKind,
    pub name: String,
    pub size: Option<u64>,
    /// Offset the transfer (re)started from.
    pub start_offset: u64,
    /// Offset reached so far.
    pub offset: u64,
    pub started_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FinishedTransfer {
    pub session: u64,
    pub kind: TransferKind,
    pub name: String,
    pub size: Option<u64>,
    pub start_offset: u64,
    pub end_offset: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterStatus {
    pub connections_total: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub transfers_completed: u64,
    pub transfers_failed: u64,
}
