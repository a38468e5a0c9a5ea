//! The HTTP side: `/metrics`, `/health`, `/ready`, `/status.json` and a status
//! page at `/`, served by hyper (HTTP/1.1, keep-alive) with an axum router and
//! tower-http's gzip. GET and HEAD only.
//!
//! What holds under abuse, and why:
//! - at most `http.max_connections` connections are open at once. The next
//!   one is not even accepted until one closes, so it waits in the kernel's
//!   backlog and costs ped no file descriptor: the ledger and the key files
//!   keep theirs whatever a scanner does;
//! - a connection has `http.header_timeout_s` to send a request's headers,
//!   and may sit idle between two requests no longer than that (hyper starts
//!   the same timer for each request head);
//! - request heads are capped at 16 KiB (431 beyond);
//! - a failing `accept` (out of file descriptors) backs off instead of spinning.
//!
//! Personal data ([`Access`]): on a listener beyond loopback, the status page,
//! `/status.json` and every series naming a participant need the bearer token
//! of `http.token_file`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub mod auth;

use auth::Token;

/// What the server asks of the daemon.
pub trait Backend: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// `Ok(())` when ready, else the reason.
    fn ready(&self) -> Result<(), String>;
    fn status_json(&self) -> String;
}

/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest `http.header_timeout_s` used: beyond, a connection would hold its
/// slot for hours.
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(300);

/// Who may see what. Built from `[http]` by [`Settings::from_config`].
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `http.token_file`, read at start.
    pub token: Option<Token>,
    /// `http.participant_metrics`: participant series on `/metrics` at all.
    pub participant_metrics: bool,
    /// `http.allowed_hosts`: `Host` values (without port) accepted; empty
    /// means the default rule of [`host_allowed`].
    pub allowed_hosts: Vec<String>,
}

/// Limits and access rules of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub access: Access,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            access: Access {
                participant_metrics: true,
                ..Access::default()
            },
        }
    }
}

impl Settings {
    /// Reads the token file, if any; a bad one stops ped (it names the key and the fix).
    pub fn from_config(http: &crate::config::HttpSection) -> Result<Settings, auth::TokenError> {
        let token = http.token_file.as_deref().map(Token::load).transpose()?;
        let header_timeout = Duration::from_secs(http.header_timeout_s.max(1));
        if header_timeout > MAX_HEADER_TIMEOUT {
            tracing::warn!(
                header_timeout_s = http.header_timeout_s,
                used_s = MAX_HEADER_TIMEOUT.as_secs(),
                "http.header_timeout_s is longer than ped uses; set it to at most 300"
            );
        }
        Ok(Settings {
            max_connections: http.max_connections.max(1),
            header_timeout: header_timeout.min(MAX_HEADER_TIMEOUT),
            access: Access {
                token,
                participant_metrics: http.participant_metrics,
                allowed_hosts: http.allowed_hosts.clone(),
            },
        })
    }
}

/// Serves until `shutdown` resolves. Open connections are then asked to close
/// after the request in flight.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) {
    let local = listener.local_addr().ok();
    let loopback = local.is_some_and(|a| a.ip().is_loopback());
    if !loopback {
        if settings.access.token.is_none() {
            tracing::warn!(
                listen = ?local,
                "HTTP listens beyond loopback without http.token_file: the status page, /status.json and participant series are refused to everyone; set http.token_file to serve them with a token, or listen on 127.0.0.1"
            );
        } else {
            tracing::info!(listen = ?local, "HTTP beyond loopback: the status page, /status.json and participant series need the bearer token");
        }
    }
    let app = router(backend, settings.access.clone(), loopback);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES.max(8192));
    let mut accept_backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        // The slot first: at the limit, nothing more is accepted (no file
        // descriptor taken) until a connection closes.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (sock, peer) = tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok(a) => {
                    accept_backoff = Duration::ZERO;
                    a
                }
                Err(e) => {
                    // EMFILE and the like: retrying at once would spin; wait,
                    // doubling up to a second, so other stages can free files.
                    accept_backoff = (accept_backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if accept_backoff == Duration::from_millis(10) {
                        tracing::warn!(error = %e, "HTTP: cannot accept a connection; backing off");
                    }
                    drop(permit);
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(accept_backoff) => {}
                    }
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = http1.serve_connection(TokioIo::new(sock), service);
        let mut stop = stop_rx.clone();
        let grace = settings.header_timeout;
        tokio::spawn(async move {
            let _slot = permit;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        });
    }
    let _ = stop_tx.send(true);
}

struct App<B> {
    backend: Arc<B>,
    access: Access,
    loopback: bool,
}

/// The routes and access rules, as served on a listener that is (or not) on
/// loopback. Public so that the rules can be tested without a socket.
pub fn router<B: Backend>(backend: Arc<B>, access: Access, loopback: bool) -> Router {
    let state = Arc::new(App {
        backend,
        access,
        loopback,
    });
    Router::new()
        .route("/", get(page::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/health", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/ready", get(ready::<B>))
        .route("/status.json", get(status_json::<B>))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n") })
        .method_not_allowed_fallback(|| async {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host::<B>,
        ))
        .layer(axum::middleware::map_response(no_store))
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .with_state(state)
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether `Host` names this server. With `http.allowed_hosts`, only those
/// names; without, on loopback only loopback names (a web page in a browser on
/// this machine cannot reach ped through a DNS name rebound to 127.0.0.1);
/// beyond loopback, any (the token guards personal data).
pub fn host_allowed(host: Option<&str>, allowed: &[String], loopback: bool) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 clients send none; a browser always does.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
    }
    if !loopback {
        return true;
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn check_host<B: Backend>(
    State(app): State<Arc<App<B>>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if host_allowed(host.as_deref(), &app.access.allowed_hosts, app.loopback) {
        next.run(req).await
    } else {
        tracing::debug!(host = ?host, "HTTP request for a host not served; refused");
        text(
            StatusCode::MISDIRECTED_REQUEST,
            "host not served (see http.allowed_hosts)\n",
        )
    }
}

impl<B> App<B> {
    /// On loopback everything is served; beyond it, personal data only with
    /// the token. `None`: served; else the refusal to send.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if self.loopback {
            return None;
        }
        let Some(token) = &self.access.token else {
            return Some(text(
                StatusCode::FORBIDDEN,
                "personal data: not served beyond loopback without http.token_file\n",
            ));
        };
        let presented = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if presented
            .into_iter()
            .any(|v| auth::authorized_value(v, token))
        {
            return None;
        }
        let mut r = text(StatusCode::UNAUTHORIZED, "token needed\n");
        // Basic lets a browser ask for the token (as the password) and resend
        // it with the status page's own requests; Bearer is for Prometheus and curl.
        let h = r.headers_mut();
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ped\", charset=\"UTF-8\""),
        );
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ped\""),
        );
        Some(r)
    }
}

async fn page<B: Backend>(State(app): State<Arc<App<B>>>, headers: HeaderMap) -> Response {
    if let Some(r) = app.refusal(&headers) {
        return r;
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
        .into_response()
}

async fn status_json<B: Backend>(State(app): State<Arc<App<B>>>, headers: HeaderMap) -> Response {
    if let Some(r) = app.refusal(&headers) {
        return r;
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.backend.status_json(),
    )
        .into_response()
}

async fn ready<B: Backend>(State(app): State<Arc<App<B>>>) -> Response {
    match app.backend.ready() {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics<B: Backend>(State(app): State<Arc<App<B>>>, headers: HeaderMap) -> Response {
    let body = app.backend.metrics();
    let with_participants = app.access.participant_metrics && app.refusal(&headers).is_none();
    let body = if with_participants {
        body
    } else {
        without_participants(&body)
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The exposition text without the samples labelled with a participant, and
/// without the `# HELP`/`# TYPE` lines of families left empty.
pub fn without_participants(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            if line.starts_with("# HELP ") {
                pending.clear();
            }
            pending.push_str(line);
            pending.push('\n');
        } else if !line.contains("participant=\"") {
            out.push_str(&pending);
            pending.clear();
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const STATUS_PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake {
        ready: AtomicBool,
    }
    impl Backend for Fake {
        fn metrics(&self) -> String {
            "# HELP ped_x x\n# TYPE ped_x gauge\nped_x{site=\"s\"} 1\n# HELP ped_participant_key_ratio k\n# TYPE ped_participant_key_ratio gauge\nped_participant_key_ratio{participant=\"H-001\",site=\"s\"} 0.5\n".to_string()
        }
        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no successful poll yet".into())
            }
        }
        fn status_json(&self) -> String {
            "{\"site\":\"t\"}".into()
        }
    }

    /// One request on its own connection, closed by the client's `Connection: close`.
    async fn get(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes after a Connection: close request")
            .unwrap();
        let at = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {out:?}"));
        (
            String::from_utf8_lossy(&out[..at]).to_string(),
            out[at + 4..].to_vec(),
        )
    }

    fn req(method: &str, path: &str, extra: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n")
    }

    async fn start(
        listen: &str,
        settings: Settings,
    ) -> (
        SocketAddr,
        Arc<Fake>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(Fake {
            ready: AtomicBool::new(false),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, backend.clone(), settings, async {
            let _ = rx.await;
        }));
        (addr, backend, tx, server)
    }

    fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
            let len =
                usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
            if len == 0 {
                return out;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
            b = &b[eol + 2 + len + 2..];
        }
    }

    fn body(b: &[u8]) -> String {
        String::from_utf8_lossy(b).to_string()
    }

    #[tokio::test]
    async fn endpoints_answer_over_a_real_socket() {
        let (addr, backend, tx, server) = start("127.0.0.1:0", Settings::default()).await;
        let (head, b) = get(addr, &req("GET", "/health", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body(&b), "ok\n");
        // Not ready says why, with 503 so that load balancers and probes see it.
        let (head, b) = get(addr, &req("GET", "/ready", "")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body(&b), "not ready: no successful poll yet\n");
        backend.ready.store(true, Ordering::SeqCst);
        let (head, _) = get(addr, &req("GET", "/ready?verbose=1", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (head, b) = get(addr, &req("GET", "/metrics", "")).await;
        let head_l = head.to_ascii_lowercase();
        assert!(
            head_l.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head_l.contains(&format!("content-length: {}", b.len())));
        assert!(head_l.contains("cache-control: no-store"), "{head}");
        assert_eq!(body(&b), backend.metrics());
        let (head, b) = get(addr, &req("GET", "/status.json", "")).await;
        assert!(head.contains("application/json"));
        assert_eq!(body(&b), "{\"site\":\"t\"}");
        let (head, b) = get(addr, &req("GET", "/", "")).await;
        assert!(head.contains("text/html"));
        let b = body(&b);
        assert!(b.contains("/status.json") && b.contains("<svg"));
        // The page loads nothing from outside: no CDN, no remote font.
        assert!(!b
            .replace("http://www.w3.org/2000/svg", "")
            .contains("http://"));
        assert!(!b.contains("https://"));
        for path in [
            "/nope",
            "/../metrics",
            "/metrics/../status.json",
            "//etc/passwd",
        ] {
            let (head, _) = get(addr, &req("GET", path, "")).await;
            assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
        }
        let (head, _) = get(addr, &req("POST", "/metrics", "")).await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        // A head beyond 16 KiB is refused, not buffered.
        let big = format!("X-Pad: {}\r\n", "a".repeat(20 * 1024));
        let (head, _) = get(addr, &req("GET", "/health", &big)).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body_and_metrics_are_gzipped_when_asked() {
        let (addr, backend, tx, _server) = start("127.0.0.1:0", Settings::default()).await;
        let (head, b) = get(addr, &req("HEAD", "/", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/html"), "{head}");
        assert!(b.is_empty(), "HEAD / sent {} body bytes", b.len());
        let (head, b) = get(addr, &req("HEAD", "/metrics", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(b.is_empty(), "HEAD /metrics sent {} body bytes", b.len());

        let (head, b) = get(addr, &req("GET", "/metrics", "Accept-Encoding: gzip\r\n")).await;
        assert!(
            head.to_ascii_lowercase().contains("content-encoding: gzip"),
            "{head}"
        );
        // Compressed on the fly: sent chunked.
        assert!(head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"));
        let b = dechunk(&b);
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&b[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, backend.metrics());
        // Not asked: not compressed.
        let (head, b) = get(addr, &req("GET", "/metrics", "")).await;
        assert!(!head.to_ascii_lowercase().contains("content-encoding"));
        assert_eq!(body(&b), backend.metrics());
        let _ = tx.send(());
    }

    #[test]
    fn host_rule() {
        let none: Vec<String> = Vec::new();
        for h in [
            "127.0.0.1:9464",
            "localhost",
            "LOCALHOST:80",
            "[::1]:9464",
            "127.0.0.2",
        ] {
            assert!(host_allowed(Some(h), &none, true), "{h}");
        }
        for h in ["evil.example", "evil.example:9464", "10.0.0.5:9464"] {
            assert!(!host_allowed(Some(h), &none, true), "{h}");
            assert!(host_allowed(Some(h), &none, false), "{h}");
        }
        assert!(host_allowed(None, &none, true));
        let list = vec!["ped.estate.lan".to_string()];
        assert!(host_allowed(Some("ped.estate.lan:9464"), &list, false));
        assert!(!host_allowed(Some("10.0.0.5:9464"), &list, false));
        assert!(!host_allowed(Some("127.0.0.1"), &list, true));
    }

    #[tokio::test]
    async fn a_host_not_served_is_refused_on_loopback() {
        let (addr, _b, tx, _server) = start("127.0.0.1:0", Settings::default()).await;
        let r = "GET /status.json HTTP/1.1\r\nHost: rebound.example\r\nConnection: close\r\n\r\n";
        let (head, b) = get(addr, r).await;
        assert!(head.starts_with("HTTP/1.1 421"), "{head}");
        assert!(!body(&b).contains("site"));
        let _ = tx.send(());
    }

    #[test]
    fn participant_series_are_filtered_with_their_help() {
        let f = Fake {
            ready: AtomicBool::new(true),
        };
        let out = without_participants(&f.metrics());
        assert_eq!(
            out,
            "# HELP ped_x x\n# TYPE ped_x gauge\nped_x{site=\"s\"} 1\n"
        );
    }

    /// More idle connections than slots: `/health` answers as soon as one
    /// closes, and the process keeps file descriptors for its own files.
    #[tokio::test]
    async fn idle_connections_beyond_the_limit_neither_starve_health_nor_files() {
        let settings = Settings {
            max_connections: 4,
            // Long enough that the idle ones stay open for the whole test.
            header_timeout: Duration::from_secs(60),
            ..Settings::default()
        };
        let (addr, _b, tx, _server) = start("127.0.0.1:0", settings).await;
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every slot is held: a request now waits in the backlog.
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        waiting
            .write_all(req("GET", "/health", "").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "answered beyond the connection limit");
        // Meanwhile ped can still open files.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("periods.jsonl"), "{}\n").unwrap();
        // The idle ones that were accepted free their slots when they close;
        // those still in the backlog are accepted, see EOF and free theirs.
        idle.clear();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut out))
            .await
            .expect("/health answers once slots free")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
        let _ = tx.send(());
    }

    /// A client that opens a connection and sends nothing loses it after
    /// `header_timeout`: it cannot hold a slot forever.
    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let settings = Settings {
            max_connections: 1,
            header_timeout: Duration::from_millis(200),
            ..Settings::default()
        };
        let (addr, _b, tx, _server) = start("127.0.0.1:0", settings).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        // EOF or a reset, either way closed: only the wait's timeout fails.
        let _closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut out))
            .await
            .expect("the silent connection is closed by the server");
        // Its slot is free again.
        let (head, _) = get(addr, &req("GET", "/health", "")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Keep-alive: two requests on one connection.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let two = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        s.write_all(two.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out)
                .matches("HTTP/1.1 200")
                .count(),
            2
        );
        let _ = tx.send(());
    }
}
