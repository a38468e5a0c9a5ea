//! The run's files and how they reach the disk: every key file rendered
//! through [`KeyFileFormat`] (or the Spanish format) and read back with its
//! validator before it is kept, `allocation.csv` beside them, and the
//! all-or-nothing write into a sibling temporary directory renamed into
//! place ([`write_out`] with everything in memory, [`write_streamed`] one
//! file at a time); a rerun into a directory holding the same files is
//! unchanged, one holding other files is refused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::job::{
    io, sha256_hex, Computed, Format, KeyKind, KeysError, KeysJob, Manifest, Measured, OutputFile,
    MANIFEST_FILE,
};
use super::manifest::manifest_of;
use super::KeyFileFormat;
use crate::dso::{enedis, spain, DsoError, KeyRow};
use crate::ids::Prm;

/// The name of the per-step allocation file written beside the keys; the
/// reconciliation reads it back.
pub const ALLOCATION_FILE: &str = "allocation.csv";

/// Hands every key file of the run to `emit` (name, text, producer PRM),
/// one at a time, each rendered and read back with its validator first.
/// Simple keys are one text for every producer, rendered and checked once.
fn each_key_file(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    mut emit: impl FnMut(String, &str, Option<String>) -> Result<(), KeysError>,
) -> Result<(), KeysError> {
    let consumers: Vec<Prm> = job.consumers.iter().map(|c| c.prm.clone()).collect();
    match job.format {
        Format::Enedis => {
            if job.producers.is_empty() {
                return Err(DsoError::Empty("no producer PRM").into());
            }
            let layout: &dyn KeyFileFormat = &job.layout;
            let checked = |rows: &[KeyRow]| -> Result<String, KeysError> {
                Ok(layout.render_checked(&job.grid, &consumers, rows, job.precision)?)
            };
            let operation = job.operation_id.as_deref();
            if job.kind == KeyKind::Simple && layout.simple_targets(&job.producers) == [None] {
                // Simple dynamic keys apply to the pooled production: one
                // file for the operation.
                let text = checked(&k.rows[0])?;
                let name = layout.file_name(&job.grid, operation, None, &k.rows[0])?;
                return emit(name, &text, None);
            }
            let shared = match job.kind {
                KeyKind::Simple => Some(checked(&k.rows[0])?),
                KeyKind::Full => None,
            };
            for (j, producer) in job.producers.iter().enumerate() {
                let rows = match job.kind {
                    KeyKind::Simple => &k.rows[0],
                    KeyKind::Full => &k.rows[j],
                };
                let own;
                let text = match &shared {
                    Some(t) => t,
                    None => {
                        own = checked(rows)?;
                        &own
                    }
                };
                let name = layout.file_name(&job.grid, operation, Some(producer), rows)?;
                emit(name, text, Some(producer.to_string()))?;
            }
        }
        Format::Spain => {
            let (name, text) = spain_file(job, m, k)?;
            emit(name, &text, None)?;
        }
    }
    Ok(())
}

/// Renders every file of the run and reads each back with its validator.
pub fn render_files(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
) -> Result<Vec<(String, String, Option<String>)>, KeysError> {
    let mut files = Vec::new();
    each_key_file(job, m, k, |name, text, producer| {
        files.push((name, text.to_string(), producer));
        Ok(())
    })?;
    let mut alloc = Vec::new();
    allocation_lines(job, m, k, &mut alloc).map_err(io(Path::new(ALLOCATION_FILE)))?;
    let alloc = String::from_utf8(alloc)
        .map_err(|e| KeysError::Input(format!("{ALLOCATION_FILE}: {e}")))?;
    files.push((ALLOCATION_FILE.to_string(), alloc, None));
    Ok(files)
}

/// The Spanish file of the run: hourly coefficients per CUPS, read back.
fn spain_file(job: &KeysJob, m: &Measured, k: &Computed) -> Result<(String, String), KeysError> {
    let cups = job
        .consumers
        .iter()
        .map(|c| {
            job.cups.get(&c.prm).cloned().ok_or_else(|| {
                KeysError::Input(format!(
                    "no CUPS for PRM {} (participant {}): add `{};<CUPS>` to the --cups file",
                    c.prm, c.id, c.prm
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pooled: Vec<f64> = m.production_kwh.iter().map(|r| r.iter().sum()).collect();
    let rows = spain::hourly_rows(
        job.grid.tz(),
        &m.periods,
        &pooled,
        &k.intended_kwh,
        &m.consumption_kwh,
    )?;
    let text = spain::render(&cups, &rows)?;
    spain::validate(&text)?;
    Ok((spain::file_name(&job.cau, job.from, job.to), text))
}

/// `allocation.csv`: per step and consumer, consumption, allocation under
/// the exported keys, and the DSO's default.
fn allocation_lines(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    w.write_all(b"Horodate;PRM;consumption_kwh;allocated_kwh;prorata_kwh\n")?;
    for (t, start) in m.periods.iter().enumerate() {
        let stamp = job.grid.format_local(*start);
        for (i, c) in job.consumers.iter().enumerate() {
            writeln!(
                w,
                "{stamp};{};{:.6};{:.6};{:.6}",
                c.prm, m.consumption_kwh[t][i], k.allocated_kwh[t][i], k.prorata_kwh[t][i]
            )?;
        }
    }
    Ok(())
}

/// Hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: usize,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(2 * digest.len());
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Renders, reads back and writes the run's files into `dir` one at a time,
/// so at most one producer's text is in memory (full dynamic keys of 1,000
/// participants are ~15 MB per producer, `allocation.csv` ~170 MB, written
/// as it is produced). Same files, bytes and checks as [`render_files`].
fn stream_files(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    dir: &Path,
) -> Result<Vec<OutputFile>, KeysError> {
    let write = |name: &str, text: &str| -> Result<(), KeysError> {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    };
    let mut outputs = Vec::new();
    each_key_file(job, m, k, |name, text, producer| {
        write(&name, text)?;
        outputs.push(OutputFile {
            sha256: sha256_hex(text.as_bytes()),
            bytes: text.len(),
            name,
            producer,
        });
        Ok(())
    })?;
    let path = dir.join(ALLOCATION_FILE);
    let f = std::fs::File::create(&path).map_err(io(&path))?;
    let mut w = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        bytes: 0,
    };
    allocation_lines(job, m, k, &mut w).map_err(io(&path))?;
    std::io::Write::flush(&mut w).map_err(io(&path))?;
    let Hashing {
        inner,
        hasher,
        bytes,
    } = w;
    let f = inner.into_inner().map_err(|e| KeysError::Io {
        path: path.clone(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io(&path))?;
    outputs.push(OutputFile {
        name: ALLOCATION_FILE.to_string(),
        sha256: hex(&hasher.finalize()),
        bytes,
        producer: None,
    });
    Ok(outputs)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// A new directory of files.
    New(Manifest),
    /// `out` already held exactly these files: nothing was touched.
    Unchanged(Manifest),
}

/// Writes the files and the manifest into `out`, all or nothing: into a
/// sibling temporary directory, synced, then renamed to `out`. If `out`
/// exists with the same files (same hashes), the run is idempotent and
/// nothing changes; if it holds anything else, nothing is overwritten.
pub fn write_out(
    out: &Path,
    files: &[(String, String, Option<String>)],
    manifest: &Manifest,
) -> Result<Written, KeysError> {
    if let Some(w) = existing_out(out, manifest)? {
        return Ok(w);
    }
    let tmp = temporary_beside(out)?;
    let result = (|| {
        let json = serde_json::to_string_pretty(manifest)
            .map_err(|e| KeysError::Input(format!("manifest: {e}")))?;
        let mut all: Vec<(String, String)> = files
            .iter()
            .map(|(n, t, _)| (n.clone(), t.clone()))
            .collect();
        all.push((MANIFEST_FILE.to_string(), json + "\n"));
        enedis::write_atomic(&tmp, &all)?;
        std::fs::rename(&tmp, out).map_err(io(out))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(Written::New(manifest.clone()))
}

/// Like [`write_out`], with each file rendered, read back and written in
/// turn (see `stream_files`) rather than all held in memory first. The
/// manifest is built from what was written, then `finish` completes it.
pub fn write_streamed(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    out: &Path,
    finish: impl FnOnce(&mut Manifest),
) -> Result<Written, KeysError> {
    let tmp = temporary_beside(out)?;
    let result = (|| {
        let outputs = stream_files(job, m, k, &tmp)?;
        let mut man = manifest_of(job, m, k, outputs)?;
        finish(&mut man);
        if let Some(w) = existing_out(out, &man)? {
            return Ok(w);
        }
        let json = serde_json::to_string_pretty(&man)
            .map_err(|e| KeysError::Input(format!("manifest: {e}")))?;
        enedis::write_atomic(&tmp, &[(MANIFEST_FILE.to_string(), json + "\n")])?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        Ok(Written::New(man))
    })();
    if !matches!(result, Ok(Written::New(_))) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// An empty sibling directory of `out` to write into before the rename.
fn temporary_beside(out: &Path) -> Result<PathBuf, KeysError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            KeysError::Input(format!("--out {}: not a directory name", out.display()))
        })?;
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// What an existing `out` means for a run that would write `manifest`:
/// the same files (unchanged, nothing to do), other files (refused), or
/// nothing (an empty directory, removed so the run can take its place).
fn existing_out(out: &Path, manifest: &Manifest) -> Result<Option<Written>, KeysError> {
    if out.exists() {
        let old = std::fs::read(out.join(MANIFEST_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        let same_files = old.as_ref().is_some_and(|o| {
            o.files == manifest.files
                && o.files.iter().all(|f| {
                    std::fs::read(out.join(&f.name)).is_ok_and(|b| sha256_hex(&b) == f.sha256)
                })
        });
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if same_files {
            if let Some(o) = old {
                return Ok(Some(Written::Unchanged(o)));
            }
        }
        if !empty {
            return Err(KeysError::Differs(out.to_path_buf()));
        }
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    Ok(None)
}
