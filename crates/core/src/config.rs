//! The server's configuration: every knob with its default, loadable from
//! TOML and overridable from the command line.
//!
//! `ferry config` prints [`Config`] serialized back to TOML, so the printed
//! file is itself a valid config that reproduces the running setup.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Everything `ferry serve` can be told. Unknown keys are rejected so that a
/// typo in a config file is an error, not a silently ignored setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory: files, partial uploads, pid file, admin socket.
    pub data: PathBuf,
    /// Root of the served files; `<data>/files` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Address every listener binds to.
    pub bind: IpAddr,
    pub transfer: TransferConfig,
    pub http: HttpConfig,
    pub kv: KvConfig,
    pub sync: SyncConfig,
    pub upgrade: UpgradeConfig,
    pub cache: CacheSection,
    pub backup: BackupConfig,
}

/// The native transfer service (GET/PUT/LIST).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub enabled: bool,
    pub port: u16,
    /// Largest frame payload accepted or sent.
    pub max_frame_bytes: u32,
    /// Payload bytes per DATA frame the server sends.
    pub chunk_bytes: u32,
    /// Unacknowledged bytes a sender keeps in flight.
    pub window_bytes: u64,
    /// Concurrent connections; further connections get an ERROR and close.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Longest accepted file name, in bytes.
    pub max_name_bytes: usize,
    /// Largest accepted upload.
    pub max_file_bytes: u64,
    /// Partial uploads untouched for this long are deleted.
    pub upload_expiry_secs: u64,
    /// Most entries a LIST returns.
    pub max_list_entries: usize,
}

/// The HTTP gateway (its own issue; the switch and port are reserved now).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub port: u16,
    /// Open connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Largest `PUT` body (413 beyond).
    pub max_upload_bytes: u64,
    /// A connection on which nothing moves for this long is closed.
    pub idle_timeout_secs: u64,
    /// Longest wait for a request's head (also bounds idle keep-alive).
    pub header_read_timeout_secs: u64,
    /// Server-wide bound on the file pieces being streamed (files not
    /// served from the cache), besides a small allowance per connection.
    pub stream_buffer_bytes: u64,
    /// Gateway worker threads, each with its own accept loop and event
    /// loop; 0: one per CPU.
    pub workers: usize,
}

/// The memcached-protocol kv service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    pub enabled: bool,
    pub port: u16,
    /// `os`: written to the log before the reply (survives a killed
    /// process); `fsync`: group-committed to disk before the reply
    /// (survives power loss); `memory`: no log, evicts like memcached.
    pub durability: KvDurability,
    /// Largest value accepted (`SERVER_ERROR object too large for cache`).
    pub max_item_bytes: u64,
    /// Memory for keys and values; persistent modes refuse writes past it
    /// (`SERVER_ERROR out of memory storing object`), `memory` evicts.
    pub max_memory: u64,
    pub max_connections: usize,
    /// A connection idle this long is closed (0: never, like memcached).
    pub idle_timeout_secs: u64,
    /// The log is not compacted below this size.
    pub compact_min_bytes: u64,
    /// Compaction starts when this fraction of the log is garbage.
    pub compact_garbage_ratio: f64,
    /// `fsync` mode: a group commit starts as soon as a write waits and no
    /// commit is running; while one runs, the next starts only once the
    /// newest running one has run for this long, µs (0: at once, up to
    /// `group_commit_threads` overlapping). Overlap helps a slow disk; on a
    /// fast one it only multiplies `fdatasync`s.
    pub group_commit_interval_us: u64,
    /// `fsync` mode: group commits (`fdatasync`s) in flight at once, one per
    /// thread; 1 commits one at a time, back to back. Commits overlap only
    /// when one runs longer than `group_commit_interval_us`.
    pub group_commit_threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDurability {
    Os,
    Fsync,
    Memory,
}

/// The sync service: the update connection on `port`, the push connection
/// on `push_port`. Plain values here (core depends on no service crate);
/// the sync crate turns them into its wire limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub enabled: bool,
    pub port: u16,
    pub push_port: u16,
    /// Clients connected at once (each holds one connection on each port).
    pub max_clients: usize,
    /// Largest File Chunk payload accepted, and the size of the chunks the
    /// server pushes.
    pub max_chunk_size: u32,
    /// Longest file name, in bytes.
    pub max_name_len: u16,
    /// Largest file one upload may carry.
    pub max_file_size: u64,
    /// Most files and tombstones the server tracks (and so the longest
    /// META-DATA and push queue).
    pub max_metadata_entries: u32,
    /// Largest META-DATA, in bytes.
    pub max_metadata_bytes: u32,
    /// Files one client may be uploading at once (interleaved chunks).
    pub max_uploads_per_client: usize,
    /// A keep-alive goes out on a connection that sent nothing for this long.
    pub keepalive_secs: u64,
    /// A connection that receives nothing (keep-alives included) for this
    /// long is closed, and its client's locks are released.
    pub idle_timeout_secs: u64,
    /// An upload that receives no chunk for this long is discarded and its
    /// lock released, even if the connection stays up.
    pub lease_timeout_secs: u64,
    /// Bytes of a large upload's chunks that may wait for one receiving
    /// client while the upload is relayed to it before its commit; a client
    /// further behind is cut off and gets the rest after the commit.
    pub relay_per_client_bytes: u64,
    /// Bytes of relayed chunks waiting in all relays of the server at once.
    pub relay_total_bytes: u64,
}

/// The in-memory file cache shared by the native GET and HTTP. Plain values
/// here (core depends on no service crate); the files crate parses `policy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Hard bound on the bytes of cached file contents.
    pub max_bytes: u64,
    /// Larger files are never cached.
    pub max_item_bytes: u64,
    /// `s3fifo` (scan-resistant), `lru` or `fifo`.
    pub policy: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    /// How long a new executable has to report READY before a rollback.
    pub timeout_secs: u64,
    /// How long a graceful shutdown waits for sessions to reach a safe point.
    pub shutdown_grace_secs: u64,
    /// How long the old process of an upgrade (or a stopping server) lets
    /// connections that drain rather than migrate (HTTP) finish.
    pub drain_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("ferry-data"),
            root: None,
            bind: IpAddr::from([127, 0, 0, 1]),
            transfer: TransferConfig::default(),
            http: HttpConfig::default(),
            kv: KvConfig::default(),
            sync: SyncConfig::default(),
            upgrade: UpgradeConfig::default(),
            cache: CacheSection::default(),
            backup: BackupConfig::default(),
        }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            enabled: true,
            port: 7070,
            max_frame_bytes: (4 * MIB) as u32,
            chunk_bytes: (256 * KIB) as u32,
            window_bytes: 8 * MIB,
            max_connections: 1024,
            idle_timeout_secs: 300,
            max_name_bytes: 1024,
            max_file_bytes: 1 << 40,
            upload_expiry_secs: 7 * 24 * 3600,
            max_list_entries: 100_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            port: 7080,
            max_connections: 1024,
            max_upload_bytes: 1 << 40,
            idle_timeout_secs: 60,
            header_read_timeout_secs: 30,
            stream_buffer_bytes: 64 << 20,
            workers: 0,
        }
    }
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            enabled: true,
            port: 11211,
            durability: KvDurability::Os,
            max_item_bytes: MIB,
            max_memory: 1 << 30,
            max_connections: 4096,
            idle_timeout_secs: 0,
            compact_min_bytes: 64 * MIB,
            compact_garbage_ratio: 0.5,
            group_commit_interval_us: 1000,
            group_commit_threads: 3,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: true,
            port: 7071,
            push_port: 7072,
            max_clients: 1024,
            max_chunk_size: MIB as u32,
            max_name_len: 1024,
            max_file_size: 1 << 40,
            max_metadata_entries: 100_000,
            max_metadata_bytes: (32 * MIB) as u32,
            max_uploads_per_client: 64,
            keepalive_secs: 10,
            idle_timeout_secs: 60,
            lease_timeout_secs: 120,
            relay_per_client_bytes: 128 * MIB,
            relay_total_bytes: 256 * MIB,
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection { max_bytes: 64 * MIB, max_item_bytes: 8 * MIB, policy: "s3fifo".to_string() }
    }
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig { timeout_secs: 30, shutdown_grace_secs: 5, drain_secs: 30 }
    }
}

/// Backup nodes of the transfer service (`ferry backup`): how uploads are
/// mirrored to them and how long a slow one may hold an upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// `all`: a PUT's `STORED` waits until every in-sync backup confirmed
    /// the file (at most `timeout_ms`); `none`: `STORED` at once.
    pub ack: BackupAck,
    /// Longest a backup may hold one upload, waiting for room in its queue
    /// or for its confirmation; past it the backup is marked behind and
    /// caught up later from the stored file.
    pub timeout_ms: u64,
    /// Upload bytes queued for one backup before uploads wait for it.
    pub max_queue_bytes: u64,
    /// Backup nodes known at once (connected or not); 0 refuses every node.
    pub max_backups: usize,
    /// How often each connected backup is compared with the whole store,
    /// which also mirrors files changed or deleted outside ferry.
    pub rescan_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupAck {
    All,
    None,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            ack: BackupAck::All,
            timeout_ms: 5000,
            max_queue_bytes: 64 * MIB,
            max_backups: 8,
            rescan_secs: 60,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        Ok(config)
    }

    /// Rejects settings that cannot work, with the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.transfer;
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if t.max_frame_bytes < 64 * KIB as u32 {
            return bad("transfer.max_frame_bytes must be at least 65536");
        }
        if t.chunk_bytes == 0 || t.chunk_bytes as u64 + 64 > t.max_frame_bytes as u64 {
            return bad("transfer.chunk_bytes must be between 1 and max_frame_bytes - 64");
        }
        // Clients acknowledge at least every MiB consumed; a smaller window
        // would stall a GET waiting for an ACK that never comes.
        if t.window_bytes < MIB || t.window_bytes < t.chunk_bytes as u64 {
            return bad("transfer.window_bytes must be at least 1048576 and at least transfer.chunk_bytes");
        }
        if t.max_connections == 0 {
            return bad("transfer.max_connections must be at least 1");
        }
        if t.max_name_bytes == 0 || t.max_name_bytes > 4096 {
            return bad("transfer.max_name_bytes must be between 1 and 4096");
        }
        let k = &self.kv;
        if k.max_item_bytes < 1024 || k.max_item_bytes > 1 << 30 {
            return bad("kv.max_item_bytes must be between 1024 and 1073741824");
        }
        if k.max_memory < k.max_item_bytes {
            return bad("kv.max_memory must be at least kv.max_item_bytes");
        }
        if k.max_connections == 0 {
            return bad("kv.max_connections must be at least 1");
        }
        if !(0.05..=0.95).contains(&k.compact_garbage_ratio) {
            return bad("kv.compact_garbage_ratio must be between 0.05 and 0.95");
        }
        if !(1..=16).contains(&k.group_commit_threads) {
            return bad("kv.group_commit_threads must be between 1 and 16");
        }
        if k.group_commit_interval_us > 1_000_000 {
            return bad("kv.group_commit_interval_us must be at most 1000000");
        }
        let b = &self.backup;
        if b.timeout_ms == 0 || b.timeout_ms > 3_600_000 {
            return bad("backup.timeout_ms must be between 1 and 3600000");
        }
        if b.max_queue_bytes < MIB || b.max_queue_bytes > 1 << 40 {
            return bad("backup.max_queue_bytes must be between 1048576 and 1099511627776");
        }
        if b.max_backups > 1024 {
            return bad("backup.max_backups must be at most 1024");
        }
        if b.rescan_secs == 0 {
            return bad("backup.rescan_secs must be at least 1");
        }
        let y = &self.sync;
        if y.max_clients == 0 {
            return bad("sync.max_clients must be at least 1");
        }
        if y.max_chunk_size == 0 || y.max_chunk_size > (64 * MIB) as u32 {
            return bad("sync.max_chunk_size must be between 1 and 67108864");
        }
        if y.max_name_len == 0 {
            return bad("sync.max_name_len must be at least 1");
        }
        if y.max_metadata_entries == 0 {
            return bad("sync.max_metadata_entries must be at least 1");
        }
        if y.max_metadata_bytes == 0 || y.max_metadata_bytes > (256 * MIB) as u32 {
            return bad("sync.max_metadata_bytes must be between 1 and 268435456");
        }
        if y.max_uploads_per_client == 0 || y.max_uploads_per_client > 4096 {
            return bad("sync.max_uploads_per_client must be between 1 and 4096");
        }
        if y.keepalive_secs == 0 || y.idle_timeout_secs <= y.keepalive_secs {
            return bad("sync.keepalive_secs must be at least 1 and below sync.idle_timeout_secs");
        }
        if y.lease_timeout_secs == 0 {
            return bad("sync.lease_timeout_secs must be at least 1");
        }
        if y.relay_total_bytes > 4096 * MIB || y.relay_per_client_bytes > y.relay_total_bytes {
            return bad("sync.relay_per_client_bytes must not exceed sync.relay_total_bytes, at most 4294967296");
        }
        Ok(())
    }

    /// Prints as TOML, the format `--config` reads.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// The served root: `root` if set, else `<data>/files`.
    pub fn root_dir(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| self.data.join("files"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = Config::default();
        let text = config.to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        config.validate().unwrap();
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let config: Config = toml::from_str("[transfer]\nport = 9000\n").unwrap();
        assert_eq!(config.transfer.port, 9000);
        assert_eq!(config.transfer.window_bytes, 8 * MIB);
        assert_eq!(config.data, PathBuf::from("ferry-data"));
    }

    #[test]
    fn cache_section_defaults_and_overrides() {
        let config: Config = toml::from_str("[cache]\npolicy = \"lru\"\n").unwrap();
        assert_eq!(config.cache.policy, "lru");
        assert_eq!((config.cache.max_bytes, config.cache.max_item_bytes), (64 * MIB, 8 * MIB));
        assert_eq!(Config::default().cache.policy, "s3fifo");
        assert!(toml::from_str::<Config>("[cache]\nmax_byte = 1\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("[transfer]\nprot = 9000\n").is_err());
    }

    #[test]
    fn backup_section_parses_and_validates() {
        let config: Config = toml::from_str("[backup]\nack = \"none\"\ntimeout_ms = 250\n").unwrap();
        assert_eq!(config.backup.ack, BackupAck::None);
        assert_eq!(config.backup.timeout_ms, 250);
        assert_eq!(config.backup.max_backups, BackupConfig::default().max_backups);
        config.validate().unwrap();
        assert!(toml::from_str::<Config>("[backup]\nack = \"some\"\n").is_err());
        assert!(toml::from_str::<Config>("[backup]\ntimeout = 1\n").is_err());
        let mut config = Config::default();
        config.backup.max_queue_bytes = 1;
        assert!(config.validate().is_err());
    }

    #[test]
    fn sync_limits_are_checked() {
        let mut config = Config::default();
        config.sync.max_chunk_size = 0;
        assert!(config.validate().unwrap_err().to_string().contains("sync.max_chunk_size"));
        let mut config = Config::default();
        config.sync.idle_timeout_secs = config.sync.keepalive_secs;
        assert!(config.validate().unwrap_err().to_string().contains("sync.keepalive_secs"));
        let config: Config = toml::from_str("[sync]\nmax_clients = 3\n").unwrap();
        assert_eq!((config.sync.max_clients, config.sync.port), (3, 7071));
    }

    #[test]
    fn validate_rejects_tiny_window() {
        let mut config = Config::default();
        config.transfer.window_bytes = 1;
        assert!(config.validate().is_err());
    }
}
