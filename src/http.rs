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
