//! The progress bar (bytes, rate, ETA) on a terminal; nothing on a pipe.

use std::io::IsTerminal;

use ferry_transfer::client::Observer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    quiet: bool,
}

impl Progress {
    /// A bar if stderr is a terminal and not `quiet`.
    pub fn new(label: &str, quiet: bool) -> Progress {
        let show = !quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_message(label.to_string());
            bar
        });
        Progress { bar, label: label.to_string(), quiet }
    }

    fn style(known: bool) -> ProgressStyle {
        let template = if known {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{msg} {bytes} {bytes_per_sec} {spinner}"
        };
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
    }
}

impl Observer for Progress {
    fn begin(&mut self, total: Option<u64>, offset: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(Self::style(total.is_some()));
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(offset);
            bar.reset_eta();
        }
    }

    fn progress(&mut self, offset: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(offset);
        }
    }

    fn notice(&mut self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.println(format!("{}: {message}", self.label));
                if message.starts_with("server paused") {
                    bar.set_message(format!("{} (paused: upgrading)", self.label));
                } else if message.starts_with("transfer resumed") {
                    bar.set_message(self.label.clone());
                }
            }
            None => eprintln!("ferry: {}: {message}", self.label),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
