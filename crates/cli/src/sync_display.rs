//! What `ferry sync` shows on a terminal: a progress bar per large file in flight and one line per
//! file synced. Nothing is shown when stdout is not a terminal (logs still go to stderr).

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_files::SafeName;
use ferry_sync::client::{Direction, SyncEvent, SyncObserver};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::bytes;

/// Files at least this large get a progress bar.
const BAR_FROM: u64 = 4 << 20;

pub struct SyncDisplay {
    multi: MultiProgress,
    bars: Mutex<HashMap<(SafeName, bool), ProgressBar>>,
}

impl SyncDisplay {
    pub fn new() -> SyncDisplay {
        SyncDisplay {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, text: String) {
        let _ = self.multi.println(text);
    }

    fn bar_done(&self, name: &SafeName, up: bool) {
        let bar = self.bars.lock().unwrap_or_else(|p| p.into_inner()).remove(&(name.clone(), up));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    fn progress(&self, name: SafeName, up: bool, done: u64, total: u64) {
        if done.max(total) < BAR_FROM {
            return;
        }
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry((name.clone(), up)).or_insert_with(|| {
            let arrow = if up { "↑" } else { "↓" };
            let (bar, template) = if total > 0 {
                (ProgressBar::new(total), "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            } else {
                (ProgressBar::no_length(), "{msg} {bytes} {bytes_per_sec} {spinner}")
            };
            let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = self.multi.add(bar.with_style(style.progress_chars("=> ")));
            bar.set_message(format!("{arrow} {name}"));
            bar
        });
        bar.set_position(done);
    }
}

impl SyncObserver for SyncDisplay {
    fn event(&self, event: SyncEvent) {
        match event {
            SyncEvent::Connected { server, client_id } => self.line(format!("connected to {server} as {client_id}")),
            SyncEvent::Disconnected { reason } => self.line(format!("disconnected: {reason}; reconnecting")),
            SyncEvent::Progress { name, direction, done, total } => {
                self.progress(name, direction == Direction::Up, done, total)
            }
            SyncEvent::Uploaded { name, size } => {
                self.bar_done(&name, true);
                self.line(format!("↑ {name} ({})", bytes(size)));
            }
            SyncEvent::Received { name, size } => {
                self.bar_done(&name, false);
                self.line(format!("↓ {name} ({})", bytes(size)));
            }
            SyncEvent::DeletedHere { name } => self.line(format!("✗ {name} (deleted on the server)")),
            SyncEvent::DeletedThere { name } => self.line(format!("✗ {name} (deleted)")),
            SyncEvent::ConflictedCopy { name, copy } => {
                self.line(format!("! {name}: the local edit is kept as {copy}"))
            }
            SyncEvent::Refused { name, status } => {
                self.bar_done(&name, true);
                self.line(format!("- {name}: {} (will retry)", status.description()));
            }
        }
    }
}
