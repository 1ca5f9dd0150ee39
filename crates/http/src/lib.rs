//! ferry's HTTP gateway: the file store over HTTP/1.1 (ranges, etags,
//! conditional requests, atomic uploads), a JSON API, Prometheus metrics and
//! a dashboard page. See docs/http.md.
//!
//! The runtime builds an [`HttpState`] and either mounts [`router`] itself or
//! hands a listener to [`serve`], which also drains connections when a live
//! upgrade moves the listening socket away. `ferry serve` runs [`HttpEntry`],
//! which runs `serve` on its own worker threads ([`workers`]), one
//! event loop per CPU as nginx does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod accept_balance;
mod api;
mod blocking;
pub mod conditional;
mod connection;
mod connection_slots;
mod counting_io;
mod dashboard;
mod date_line;
mod error;
pub mod file_body;
mod file_head;
mod file_lane;
mod file_stream;
mod fresh_stat;
mod get;
pub mod metrics;
pub mod path;
mod piece_budget;
mod plain_lane;
mod plain_request;
mod prometheus;
mod put;
pub mod range;
mod resolved_names;
mod rewind_io;
mod router;
mod send_file;
mod serve;
pub mod service_entry;
mod state;
mod temp_upload;
#[cfg(test)]
mod test_state;
mod tracked_body;
pub mod transfers;
pub mod workers;

pub use error::HttpError;
pub use file_body::{FileChanged, load_whole};
pub use metrics::{HttpMetrics, MetricsSnapshot};
pub use router::router;
pub use serve::serve;
pub use service_entry::{ExtraStatus, HttpEntry};
pub use state::{HttpLimits, HttpState, StatusSource};
pub use transfers::{TransferInfo, TransferKind};
