//! A small HTTP/1.1 server: `/metrics`, `/health`, `/ready`, `/status.json` and a
//! status page at `/`. GET only, one request per connection, bounded request
//! size: enough for Prometheus and a browser, and nothing to configure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub mod auth;

/// What the server asks of the daemon.
pub trait Backend: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// `Ok(())` when ready, else the reason.
    fn ready(&self) -> Result<(), String>;
    fn status_json(&self) -> String;
}

pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            acc = listener.accept() => {
                let Ok((mut sock, _)) = acc else { continue };
                let b = backend.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle(&mut sock, &*b)).await;
                });
            }
        }
    }
}

async fn handle<B: Backend>(sock: &mut tokio::net::TcpStream, b: &B) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(sock, 431, "text/plain", "request header too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    if method != "GET" && method != "HEAD" {
        return respond(sock, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/metrics" => {
            respond(
                sock,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &b.metrics(),
            )
            .await
        }
        "/health" => respond(sock, 200, "text/plain", "ok\n").await,
        "/ready" => match b.ready() {
            Ok(()) => respond(sock, 200, "text/plain", "ready\n").await,
            Err(why) => respond(sock, 503, "text/plain", &format!("not ready: {why}\n")).await,
        },
        "/status.json" => respond(sock, 200, "application/json", &b.status_json()).await,
        "/" => respond(sock, 200, "text/html; charset=utf-8", STATUS_PAGE).await,
        _ => respond(sock, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

const STATUS_PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        ready: AtomicBool,
    }
    impl Backend for Fake {
        fn metrics(&self) -> String {
            "# TYPE ped_x gauge\nped_x 1\n".into()
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

    async fn get(addr: std::net::SocketAddr, request: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn endpoints_answer_over_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(Fake {
            ready: AtomicBool::new(false),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, backend.clone(), async {
            let _ = rx.await;
        }));
        let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");

        let (head, body) = get(addr, &req("/health")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");
        // Not ready says why, with 503 so that load balancers and probes see it.
        let (head, body) = get(addr, &req("/ready")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert_eq!(body, "not ready: no successful poll yet\n");
        backend.ready.store(true, Ordering::SeqCst);
        let (head, _) = get(addr, &req("/ready?verbose=1")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (head, body) = get(addr, &req("/metrics")).await;
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "# TYPE ped_x gauge\nped_x 1\n");
        let (head, body) = get(addr, &req("/status.json")).await;
        assert!(head.contains("application/json"));
        assert_eq!(body, "{\"site\":\"t\"}");
        let (head, body) = get(addr, &req("/")).await;
        assert!(head.contains("text/html"));
        assert!(body.contains("/status.json") && body.contains("<svg"));
        // The page loads nothing from outside: no CDN, no remote font.
        assert!(!body
            .replace("http://www.w3.org/2000/svg", "")
            .contains("http://"));
        assert!(!body.contains("https://"));
        let (head, _) = get(addr, &req("/nope")).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
