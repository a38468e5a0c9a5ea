//! Progress of the LP loop: an indicatif bar on stderr, drawn only when asked
//! for and stderr is a terminal (logs and tests see nothing).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(super) struct Progress {
    bar: ProgressBar,
    total: u64,
    /// The local day shown, changed only when the loop enters a new one.
    label: String,
}

impl Progress {
    pub(super) fn new(enabled: bool, total: usize) -> Self {
        let total = total.max(1) as u64;
        let bar = if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // The template is a constant: should indicatif refuse it, the
            // default style still shows the count.
            if let Ok(style) = ProgressStyle::with_template(
                "backtest [{bar:30}] {percent:>3}% {pos}/{len} steps {msg} elapsed {elapsed} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            total,
            label: String::new(),
        }
    }

    /// `done` steps of the total are replayed, the last one in `label`'s day.
    pub(super) fn update(&mut self, done: usize, label: &str) {
        if self.bar.is_hidden() {
            return;
        }
        if label != self.label {
            self.label = label.to_string();
            self.bar.set_message(self.label.clone());
        }
        self.bar.set_position(done as u64);
        if done as u64 >= self.total {
            self.bar.finish();
        }
    }
}
