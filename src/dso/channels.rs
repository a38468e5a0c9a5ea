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

/// `url` with its user-info (`user:secret@`) replaced by `***@`. This is the
/// only form of a delivery URL that logs, errors, `ped check` and the
/// outbox's error column may hold.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// POSTs a file to an HTTP(S) endpoint with an `Idempotency-Key` header, so
/// a retry of a file whose acknowledgement was lost is not counted twice.
/// 2xx: delivered; 408, 429, 5xx, timeouts, refused or dropped connections:
/// transient; other statuses (4xx, unexpected 3xx): permanent.
///
/// One POST has an overall deadline, from the connection to the last byte
/// read, so a receiver that trickles its answer cannot hold the outbox.
pub struct HttpPost {
    url: String,
    /// `url` as [`redact_url`] shows it.
    shown: String,
    /// The user-info of `url`, if any: scrubbed from every message.
    userinfo: Option<String>,
    agent: ureq::Agent,
    bearer: Option<String>,
    deadline: Duration,
}

impl std::fmt::Debug for HttpPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the URL's credentials stay out of logs.
        f.debug_struct("HttpPost")
            .field("url", &self.shown)
            .finish()
    }
}

impl HttpPost {
    /// `url` must be `http://` or `https://`; TLS is rustls with the Mozilla
    /// roots, so no system OpenSSL is involved. `deadline` bounds a whole
    /// POST, from the connection to the last byte of the answer (and so every
    /// read and write in it); `connect_timeout` the connection alone.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        deadline: Duration,
        bearer: Option<String>,
    ) -> Result<Self, DeliveryError> {
        let shown = redact_url(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(DeliveryError::Permanent(format!(
                "delivery URL `{shown}` must start with http:// or https://"
            )));
        }
        let userinfo = url.split_once("://").and_then(|(_, rest)| {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            rest[..end]
                .rfind('@')
                .map(|at| rest[..at].to_string())
                .filter(|u| !u.is_empty())
        });
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect_timeout)
            // One deadline for the whole exchange (it takes precedence over
            // per-read and per-write timeouts in ureq): a trickle cannot
            // reset it the way it resets a per-read timeout.
            .timeout(deadline)
            .redirects(0)
            .build();
        Ok(HttpPost {
            url: url.to_string(),
            shown,
            userinfo,
            agent,
            bearer,
            deadline,
        })
    }

    /// Every message leaving the channel goes through here.
    fn scrub(&self, msg: String) -> String {
        let msg = msg.replace(&self.url, &self.shown);
        match &self.userinfo {
            Some(u) => {
                let msg = msg.replace(u.as_str(), "***");
                // The password alone, as a server might echo it back decoded.
                match u.split_once(':') {
                    Some((_, pw)) if pw.len() >= 4 => msg.replace(pw, "***"),
                    _ => msg,
                }
            }
            None => msg,
        }
    }

    fn transient(&self, msg: String) -> DeliveryError {
        DeliveryError::Transient(self.scrub(msg))
    }

    fn permanent(&self, msg: String) -> DeliveryError {
        DeliveryError::Permanent(self.scrub(msg))
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
        let started = std::time::Instant::now();
        let url = &self.shown;
        let result = match req.send_bytes(&d.content) {
            Ok(resp) => {
                let status = resp.status();
                let mut body = String::new();
                let read = resp.into_reader().take(4096).read_to_string(&mut body);
                if started.elapsed() > self.deadline || read.is_err() {
                    // The answer did not arrive whole in time: whether the
                    // receiver kept the file is unknown, so try again (same key).
                    Err(self.transient(format!(
                        "HTTP {status} from {url}, answer not read within the {} s deadline",
                        self.deadline.as_secs_f64()
                    )))
                } else if (200..300).contains(&status) {
                    Ok(format!("HTTP {status} {}", short(&body)))
                } else {
                    Err(self.permanent(format!("unexpected HTTP {status} from {url}")))
                }
            }
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let msg = format!("HTTP {status} from {url}: {}", short(&body));
                if status == 408 || status == 429 || status >= 500 {
                    Err(self.transient(msg))
                } else {
                    Err(self.permanent(msg))
                }
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind::*;
                // Not `t`'s own Display: it starts with the URL as given.
                let mut msg = format!("{url}: {}", t.kind());
                if let Some(m) = t.message() {
                    msg.push_str(&format!(": {m}"));
                }
                if let Some(src) = std::error::Error::source(&t) {
                    msg.push_str(&format!(": {src}"));
                }
                match t.kind() {
                    InvalidUrl | UnknownScheme | InsecureRequestHttpsOnly | InvalidProxyUrl => {
                        Err(self.permanent(msg))
                    }
                    _ => Err(self.transient(msg)),
                }
            }
        };
        result.map(|receipt| self.scrub(receipt))
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
        let s = Duration::from_secs(1);
        let e = HttpPost::new("ftp://user:s3cr3t-pw@x", s, s, None).unwrap_err();
        assert!(
            matches!(&e, DeliveryError::Permanent(m) if m == "delivery URL `ftp://***@x` must start with http:// or https://"),
            "{e}"
        );
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redact_url("https://user:secret@dso.example:8443/keys?a=b@c"),
            "https://***@dso.example:8443/keys?a=b@c"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9/keys"),
            "http://127.0.0.1:9/keys"
        );
        assert_eq!(redact_url("https://tok@h/"), "https://***@h/");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    /// A local receiver: answers each connection with `reply(n)` (None:
    /// drop it) after reading the request; serves `n` connections.
    fn receiver(
        n: usize,
        reply: impl Fn(usize, &mut std::net::TcpStream) + Send + 'static,
    ) -> (String, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            for k in 0..n {
                let Ok((mut s, _)) = l.accept() else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                // The body too: closing with unread bytes sends a reset,
                // which can discard the answer before the client reads it.
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = s.read_exact(&mut body);
                reply(k, &mut s);
                let _ = s.flush();
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        });
        (format!("http://user:s3cr3t-pw@{addr}/keys"), h)
    }

    #[test]
    fn credentials_in_the_url_reach_neither_errors_nor_the_outbox() {
        let (url, h) = receiver(2, |k, s| {
            let body = "no user:s3cr3t-pw here";
            let code = if k == 0 { 503 } else { 403 };
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        let t = Duration::from_secs(5);
        let post = HttpPost::new(&url, t, t, None).unwrap();
        assert!(!format!("{post:?}").contains("s3cr3t"));
        let d = delivery("k.csv", b"x");
        let shown = url.replace("user:s3cr3t-pw", "***");
        let e1 = post.deliver(&d).unwrap_err();
        assert_eq!(
            e1,
            DeliveryError::Transient(format!("HTTP 503 from {shown}: no *** here"))
        );
        let e2 = post.deliver(&d).unwrap_err();
        assert!(
            matches!(&e2, DeliveryError::Permanent(m) if m.starts_with(&format!("HTTP 403 from {shown}"))),
            "{e2}"
        );
        h.join().unwrap();
        // Nothing listens any more: a transport error, scrubbed too.
        let e3 = post.deliver(&d).unwrap_err();
        let DeliveryError::Transient(m) = &e3 else {
            panic!("{e3}")
        };
        assert!(
            m.starts_with(&format!("{shown}: ")) && !m.contains("s3cr3t"),
            "{m}"
        );
    }
}
