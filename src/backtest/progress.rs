//! Progress of the LP loop on stderr.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub(super) struct Progress {
    pub(super) enabled: bool,
    pub(super) tty: bool,
    pub(super) total: usize,
    pub(super) shown: usize,
    pub(super) began: Instant,
}

impl Progress {
    pub(super) fn new(enabled: bool, total: usize) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            total: total.max(1),
            shown: usize::MAX,
            began: Instant::now(),
        }
    }

    pub(super) fn update(&mut self, done: usize, label: &str) {
        if !self.enabled {
            return;
        }
        // Per mille on a terminal, every 10 % in a log.
        let unit = if self.tty { 1000 } else { 10 };
        let now = done * unit / self.total;
        if now == self.shown {
            return;
        }
        self.shown = now;
        let frac = done as f64 / self.total as f64;
        let el = self.began.elapsed().as_secs_f64();
        let eta = if frac > 0.0 { el / frac - el } else { 0.0 };
        let width = 30;
        let fill = (frac * width as f64) as usize;
        let bar: String = "#".repeat(fill) + &"-".repeat(width - fill.min(width));
        let mut e = std::io::stderr().lock();
        let line = format!(
            "backtest [{bar}] {:5.1}% {done}/{} steps {label} elapsed {el:.0} s eta {eta:.0} s",
            frac * 100.0,
            self.total
        );
        let _ = if self.tty {
            write!(e, "\r{line}")
        } else {
            writeln!(e, "{line}")
        };
        if self.tty && done >= self.total {
            let _ = writeln!(e);
        }
    }
}
