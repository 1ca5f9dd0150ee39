//! What `ferry backup` shows: one status line, kept up to date, on a
//! terminal; one line per event on a pipe (or nothing with `--quiet`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use ferry_transfer::client::ClientError;
use ferry_transfer::client::backup::BackupObserver;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format;

pub struct BackupStatus {
    bar: Option<ProgressBar>,
    quiet: bool,
    dir: String,
    server: String,
    state: String,
    stored: u64,
    bytes: u64,
    deleted: u64,
    last: String,
}

impl BackupStatus {
    pub fn new(dir: &Path, quiet: bool) -> BackupStatus {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        BackupStatus {
            bar,
            quiet,
            dir: dir.display().to_string(),
            server: String::new(),
            state: "starting".into(),
            stored: 0,
            bytes: 0,
            deleted: 0,
            last: String::new(),
        }
    }

    /// Redraws the status line, or prints `event` when there is no line.
    fn show(&self, event: Option<String>) {
        match &self.bar {
            Some(bar) => {
                let mut line = format!(
                    "backup {} <- {}: {}; {} files stored ({}), {} deleted",
                    self.dir,
                    self.server,
                    self.state,
                    self.stored,
                    format::bytes(self.bytes),
                    self.deleted
                );
                if !self.last.is_empty() {
                    line.push_str(&format!("; last {}", self.last));
                }
                bar.set_message(line);
            }
            None => {
                if let Some(event) = event
                    && !self.quiet
                {
                    eprintln!("ferry: backup: {event}");
                }
            }
        }
    }

    fn notice_line(&self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(format!("ferry: backup: {message}")),
            None => eprintln!("ferry: backup: {message}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl BackupObserver for BackupStatus {
    fn connecting(&mut self, server: &str, attempt: u32) {
        self.server = server.to_string();
        self.state = if attempt == 0 { "connecting".into() } else { format!("reconnecting (attempt {})", attempt + 1) };
        self.show(None);
    }

    fn registered(&mut self, server: &str, files: u64) {
        self.state = "connected".into();
        self.show(Some(format!("registered with {server} ({files} files held)")));
    }

    fn stored(&mut self, name: &str, size: u64) {
        self.stored += 1;
        self.bytes += size;
        self.last = name.to_string();
        self.show(Some(format!("stored {name} ({})", format::bytes(size))));
    }

    fn deleted(&mut self, name: &str) {
        self.deleted += 1;
        self.last = format!("{name} (deleted)");
        self.show(Some(format!("deleted {name}")));
    }

    fn notice(&mut self, message: &str) {
        self.notice_line(message);
    }

    fn disconnected(&mut self, error: &ClientError, retry_in: Duration) {
        self.state = "disconnected".into();
        self.notice_line(&format!("{error}; reconnecting in {:.1}s", retry_in.as_secs_f64()));
        self.show(None);
    }
}

impl Drop for BackupStatus {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
