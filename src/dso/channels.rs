//! Delivery channels behind [`Deliver`]: a folder drop and an HTTP(S) POST,
//! plus [`Retrying`], which retries transient failures with exponential
//! backoff. Neither channel validates content: the caller sends only files
//! that passed their format's validator.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::delivery::{Deliver, Delivery, DeliveryError};

/// A name that can only land inside the destination: no separators, no
/// parent references, no hidden or temporary names.
fn check_name(name: &str) -> Result<(), DeliveryError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 200;
    if ok {
        Ok(())
    } else {
        Err(DeliveryError::Permanent(format!(
            "file name `{name}` is not a plain file name"
        )))
    }
}

/// Drops files into a directory (a share the DSO's or the PMO's tooling
/// picks up). The file appears whole or not at all: written to a hidden
/// temporary name, synced, then hard-linked to its name, which fails rather
/// than replace a file that is already there. The same bytes again are a
/// success (a retry after a lost acknowledgement); different bytes under an
/// existing name are refused.
#[derive(Debug, Clone)]
pub struct FolderDrop {
    pub dir: PathBuf,
}

impl FolderDrop {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FolderDrop { dir: dir.into() }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DeliveryError {
    use std::io::ErrorKind::*;
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        // A missing or forbidden destination needs a person, not a retry.
        NotFound | PermissionDenied | ReadOnlyFilesystem | NotADirectory => {
            DeliveryError::Permanent(msg)
        }
        _ => DeliveryError::Transient(msg),
    }
}

impl Deliver for FolderDrop {
    fn channel(&self) -> &'static str {
        "folder"
    }

    fn deliver(&self, d: &Delivery) -> Result<String, DeliveryError> {
        check_name(&d.file_name)?;
        let target = self.dir.join(&d.file_name);
        let same = |path: &Path| -> Result<String, DeliveryError> {
            let existing = fs::read(path).map_err(|e| io_error("read", path, e))?;
            if existing == d.content {
                Ok(format!("{} (already there, same bytes)", path.display()))
            } else {
                Err(DeliveryError::Permanent(format!(
                    "{} already exists with different content; not overwritten",
                    path.display()
                )))
            }
        };
        if target.exists() {
            return same(&target);
        }
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", d.file_name, std::process::id()));
        let written = (|| {
            let mut f = fs::File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
            f.write_all(&d.content)
                .map_err(|e| io_error("write", &tmp, e))?;
            f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
            match fs::hard_link(&tmp, &target) {
                Ok(()) => Ok(format!("{}", target.display())),
                // Someone put it there meanwhile: same bytes is fine.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same(&target),
                Err(e) => Err(io_error("link", &target, e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if let Ok(dir) = fs::File::open(&self.dir) {
            // Makes the new name durable; a failure here loses nothing already reported.
            let _ = dir.sync_all();
        }
        written
    }
}

/// POSTs a file to an HTTP(S) endpoint with an `Idempotency-Key` header, so
/// a retry of a file whose acknowledgement was lost is not counted twice.
/// 2xx: delivered; 408, 429, 5xx, timeouts, refused or dropped connections:
/// transient; other statuses (4xx, unexpected 3xx): permanent.
pub struct HttpPost {
    url: String,
    agent: ureq::Agent,
    bearer: Option<String>,
}

impl std::fmt::Debug for HttpPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("HttpPost").field("url", &self.url).finish()
    }
}

impl HttpPost {
    /// `url` must be `http://` or `https://`; TLS is rustls with the Mozilla
    /// roots, so no system OpenSSL is involved.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
        bearer: Option<String>,
    ) -> Result<Self, DeliveryError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DeliveryError::Permanent(format!(
                "delivery URL `{url}` must start with http:// or https://"
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect_timeout)
            .timeout_read(read_timeout)
            .timeout_write(read_timeout)
            .redirects(0)
            .build();
        Ok(HttpPost {
            url: url.to_string(),
            agent,
            bearer,
        })
    }
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else if name.ends_with(".txt") {
        "text/plain; charset=utf-8"
    } else if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

fn short(body: &str) -> String {
    let t = body.trim();
    match t.char_indices().nth(200) {
        Some((k, _)) => format!("{}…", &t[..k]),
        None => t.to_string(),
    }
}

impl Deliver for HttpPost {
    fn channel(&self) -> &'static str {
        if self.url.starts_with("https://") {
            "https"
        } else {
            "http"
        }
    }

    fn deliver(&self, d: &Delivery) -> Result<String, DeliveryError> {
        check_name(&d.file_name)?;
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", content_type(&d.file_name))
            .set("Idempotency-Key", &d.idempotency_key)
            .set(
                "Content-Disposition",
                &format!("attachment; filename=\"{}\"", d.file_name),
            );
        if let Some(token) = &self.bearer {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        match req.send_bytes(&d.content) {
            Ok(resp) => {
                let status = resp.status();
                let mut body = String::new();
                let _ = resp.into_reader().take(4096).read_to_string(&mut body);
                if (200..300).contains(&status) {
                    Ok(format!("HTTP {status} {}", short(&body)))
                } else {
                    Err(DeliveryError::Permanent(format!(
                        "unexpected HTTP {status} from {}",
                        self.url
                    )))
                }
            }
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let msg = format!("HTTP {status} from {}: {}", self.url, short(&body));
                if status == 408 || status == 429 || status >= 500 {
                    Err(DeliveryError::Transient(msg))
                } else {
                    Err(DeliveryError::Permanent(msg))
                }
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind::*;
                let msg = format!("{}: {t}", self.url);
                match t.kind() {
                    InvalidUrl | UnknownScheme | InsecureRequestHttpsOnly | InvalidProxyUrl => {
                        Err(DeliveryError::Permanent(msg))
                    }
                    _ => Err(DeliveryError::Transient(msg)),
                }
            }
        }
    }
}

/// Retries a channel's transient failures: up to `attempts` tries, waiting
/// `base`, `2 × base`, … (at most `max_delay`) in between. Permanent failures
/// return at once. The same [`Delivery`] (same idempotency key) is sent each
/// time.
pub struct Retrying<D> {
    pub inner: D,
    pub attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl<D: Deliver> Retrying<D> {
    pub fn new(inner: D, attempts: u32, base: Duration, max_delay: Duration) -> Self {
        Retrying {
            inner,
            attempts: attempts.max(1),
            base,
            max_delay,
        }
    }

    /// The wait before try `n + 1` (n from 1).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max_delay)
    }
}

impl<D: Deliver> Deliver for Retrying<D> {
    fn channel(&self) -> &'static str {
        self.inner.channel()
    }

    fn deliver(&self, d: &Delivery) -> Result<String, DeliveryError> {
        let mut n = 0;
        loop {
            n += 1;
            match self.inner.deliver(d) {
                Ok(r) if n > 1 => return Ok(format!("{r} (after {n} tries)")),
                Ok(r) => return Ok(r),
                Err(DeliveryError::Transient(why)) if n < self.attempts => {
                    let wait = self.delay(n);
                    tracing::warn!(channel = self.channel(), file = %d.file_name, try_ = n, wait_ms = wait.as_millis() as u64, error = %why, "delivery failed; retrying");
                    std::thread::sleep(wait);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(name: &str, content: &[u8]) -> Delivery {
        Delivery {
            file_name: name.into(),
            content: content.to_vec(),
            idempotency_key: "k1".into(),
        }
    }

    #[test]
    fn folder_drop_is_atomic_idempotent_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let ch = FolderDrop::new(dir.path());
        let d = delivery("30000000000001_20251001_20251031.csv", b"Horodate;1\n");
        assert!(ch.deliver(&d).is_ok());
        assert_eq!(fs::read(dir.path().join(&d.file_name)).unwrap(), d.content);
        assert!(ch.deliver(&d).unwrap().contains("already there"));
        let changed = delivery(&d.file_name, b"Horodate;2\n");
        assert!(matches!(
            ch.deliver(&changed),
            Err(DeliveryError::Permanent(_))
        ));
        assert_eq!(fs::read(dir.path().join(&d.file_name)).unwrap(), d.content);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        for bad in ["../x.csv", ".hidden", "a/b.csv", ""] {
            assert!(matches!(
                ch.deliver(&delivery(bad, b"x")),
                Err(DeliveryError::Permanent(_))
            ));
        }
        let missing = FolderDrop::new(dir.path().join("nope"));
        assert!(matches!(
            missing.deliver(&d),
            Err(DeliveryError::Permanent(_))
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retrying::new(
            FolderDrop::new("."),
            5,
            Duration::from_millis(100),
            Duration::from_millis(350),
        );
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(350));
        assert_eq!(r.delay(40), Duration::from_millis(350));
    }

    #[test]
    fn http_post_rejects_other_schemes() {
        assert!(HttpPost::new(
            "ftp://x",
            Duration::from_secs(1),
            Duration::from_secs(1),
            None
        )
        .is_err());
    }
}
