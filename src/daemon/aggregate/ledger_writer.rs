//! The ledger writer: closed periods are committed in order on their own
//! thread, kept in memory while the ledger refuses them (at most
//! [`MAX_PENDING`]) and retried; each period is also appended to the
//! JSON-lines export.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::day_files::{finalise, prune, write_day_files};
use crate::daemon::Shared;
use crate::ledger::{ClosedPeriod, Ledger, LedgerError};

/// Closed periods waiting for the ledger: a week of quarter-hours (about
/// 10 MB for the demo site). Past that the oldest is dropped (logged; it stays
/// in the JSON-lines export) rather than letting memory grow without end.
pub const MAX_PENDING: usize = 7 * 96;

/// Periods written per attempt when catching up.
const CATCH_UP_BATCH: usize = 32;

/// The aggregator's side of the ledger: writes in order, keeps what could not
/// be written, retries.
pub(in crate::daemon) struct Sink {
    pub(super) path: PathBuf,
    pub(super) ledger: Option<Ledger>,
    pub(super) pending: VecDeque<ClosedPeriod>,
    /// Local day ranges (a day, a month) whose last period is stored but whose
    /// final key files are not yet recorded.
    pub(super) to_finalise: BTreeSet<(NaiveDate, NaiveDate)>,
    failing: bool,
    last_try: Option<std::time::Instant>,
    /// Local days whose working key files this process wrote whole: later
    /// periods of the day are appended to them.
    days_current: BTreeSet<NaiveDate>,
    /// Test-only: while set, no period is committed, standing in for a disk
    /// that hangs ([`crate::daemon::LedgerOptions::writer_hold`]).
    pub(in crate::daemon) hold: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Sink {
    pub(in crate::daemon) fn open(path: PathBuf) -> Sink {
        let ledger = match Ledger::open(&path) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %e, "ledger not available; closed periods are kept in memory until it is");
                None
            }
        };
        Sink {
            path,
            ledger,
            pending: VecDeque::new(),
            to_finalise: BTreeSet::new(),
            failing: false,
            last_try: None,
            days_current: BTreeSet::new(),
            hold: None,
        }
    }

    fn write_error(&mut self, shared: &Shared, e: &LedgerError) {
        crate::events::emit(
            &shared.metrics,
            crate::events::LedgerWriteFailed {
                error: e,
                pending: self.pending.len(),
                first: !self.failing,
            },
        );
        self.failing = true;
    }

    #[cfg(test)]
    pub(super) fn push(&mut self, shared: &Shared, p: ClosedPeriod) {
        self.enqueue(shared, p);
        self.flush(shared);
    }

    fn enqueue(&mut self, shared: &Shared, p: ClosedPeriod) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(old) = self.pending.pop_front() {
                tracing::error!(period = %old.start, "ledger unwritable for too long: oldest unwritten period dropped from memory (still in periods.jsonl)");
            }
        }
        self.pending.push_back(p);
        self.gauge(shared);
    }

    /// Writes what is pending, oldest first; stops at the first failure.
    fn flush(&mut self, shared: &Shared) {
        self.last_try = Some(std::time::Instant::now());
        if self.ledger.is_none() {
            match Ledger::open(&self.path) {
                Ok(l) => self.ledger = Some(l),
                Err(e) => {
                    self.write_error(shared, &e);
                    self.gauge(shared);
                    return;
                }
            }
        }
        // A long backlog is written a batch at a time, so that retries and
        // final files are interleaved with it.
        let mut budget = CATCH_UP_BATCH;
        while let Some(p) = self.pending.front() {
            let Some(ledger) = self.ledger.as_mut() else {
                break;
            };
            if budget == 0 {
                break;
            }
            budget -= 1;
            if let Some(hold) = &self.hold {
                while hold.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            match ledger.commit_period(p) {
                Ok(_) => {
                    if self.failing {
                        tracing::info!(period = %p.start, "ledger writable again; catching up");
                        self.failing = false;
                    }
                    let p = self.pending.pop_front();
                    if let Some(p) = p {
                        write_day_files(shared, ledger, &p, &mut self.days_current);
                        self.day_complete(shared, p.start, p.end);
                    }
                }
                Err(e @ LedgerError::PeriodConflict { .. }) => {
                    // Never rewritten: the stored version stands.
                    tracing::error!(error = %e, "period not stored again");
                    self.pending.pop_front();
                }
                Err(e) => {
                    self.write_error(shared, &e);
                    // Reopened at the next try: a connection SQLite opened
                    // read-only (the file was immutable then) stays read-only
                    // after the file becomes writable.
                    self.ledger = None;
                    break;
                }
            }
        }
        if let Some(ledger) = self.ledger.as_mut() {
            while let Some((first, last)) = self.to_finalise.first().copied() {
                match finalise(shared, ledger, first, last) {
                    Ok(()) => {
                        self.to_finalise.remove(&(first, last));
                        prune(shared, ledger, last);
                    }
                    Err(e) => {
                        self.write_error(shared, &e);
                        break;
                    }
                }
            }
        }
        self.gauge(shared);
    }

    /// If `[start, end)` was the last period of its local day (or month),
    /// that day's (month's) final files are due.
    pub(super) fn day_complete(
        &mut self,
        shared: &Shared,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) {
        let grid = shared.site.grid;
        let day = grid.local_day(start);
        let Some(next) = day.succ_opt() else { return };
        if grid.local_midnight(next).ok() != Some(end) {
            return;
        }
        self.to_finalise.insert((day, day));
        if next.day() == 1 {
            if let Some(first) = day.with_day(1) {
                self.to_finalise.insert((first, day));
            }
        }
    }

    fn gauge(&self, shared: &Shared) {
        shared
            .metrics
            .ledger_pending_periods
            .set(self.pending.len() as f64);
    }

    fn retry_due(&self) -> bool {
        (!self.pending.is_empty() || !self.to_finalise.is_empty())
            && match self.last_try {
                // A backlog on a healthy ledger goes on at once, a batch at a time.
                _ if !self.failing && !self.pending.is_empty() => true,
                None => true,
                Some(t) => t.elapsed() >= Duration::from_secs(1),
            }
    }
}

/// What the aggregator hands to the writer thread.
pub(super) struct ToWrite {
    pub(super) closed: ClosedPeriod,
}

/// The ledger writer: its own OS thread, because a commit is an fsync and the
/// day files are more; the aggregator only queues closed periods (unbounded:
/// a closed period is never dropped here, the [`MAX_PENDING`] cap applies
/// when the ledger keeps refusing) and never waits for the disk.
pub(super) fn spawn_writer(
    shared: Arc<Shared>,
    mut sink: Sink,
) -> (
    std::sync::mpsc::Sender<ToWrite>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<ToWrite>();
    let handle = std::thread::spawn(move || {
        use std::sync::mpsc::RecvTimeoutError;
        let mut open = true;
        while open {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(first) => {
                    // Take everything queued: a backlog is written in batches.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    for w in batch {
                        if let Err(e) = append_record(&shared.output_dir, &w.closed.record_json) {
                            tracing::error!(error = %e, "period record not archived");
                        }
                        sink.enqueue(&shared, w.closed);
                    }
                    sink.flush(&shared);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if sink.retry_due() {
                        sink.flush(&shared);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        // Stopping: write what is still pending while the ledger takes it.
        while !sink.pending.is_empty() || !sink.to_finalise.is_empty() {
            let before = (sink.pending.len(), sink.to_finalise.len());
            sink.flush(&shared);
            if (sink.pending.len(), sink.to_finalise.len()) == before {
                break;
            }
        }
    });
    (tx, handle)
}

/// The JSON-lines export of period records, appended (on the writer thread)
/// even while the ledger refuses writes.
fn append_record(dir: &std::path::Path, line: &str) -> std::io::Result<()> {
    let ledger = dir.join("ledger");
    std::fs::create_dir_all(&ledger)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger.join("periods.jsonl"))?;
    writeln!(f, "{line}")?;
    f.sync_data()
}
