//! The HTTP delivery channel against a local server on 127.0.0.1 that fails
//! on purpose: 503s, a dropped connection, then 201; a 400; a server that
//! never answers (read timeout). Each server serves a fixed number of
//! connections and stops by itself.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ped::dso::channels::{HttpPost, Retrying};
use ped::dso::delivery::{Deliver, Delivery, DeliveryError};

mod common;

#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    Drop,
    Silent(Duration),
}

#[derive(Debug, Default, Clone)]
struct Seen {
    idempotency_key: Option<String>,
    content_disposition: Option<String>,
    body: Vec<u8>,
}

/// Serves `script.len()` connections, one request each, then exits.
fn server(script: Vec<Reply>) -> (String, Arc<Mutex<Vec<Seen>>>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let h = std::thread::spawn(move || {
        for reply in script {
            let Ok((mut stream, _)) = l.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let req = common::read_request(&mut stream);
            log.lock().unwrap().push(Seen {
                idempotency_key: req.header("idempotency-key").map(String::from),
                content_disposition: req.header("content-disposition").map(String::from),
                body: req.body.clone(),
            });
            match reply {
                Reply::Status(code) => {
                    let text = format!("status {code}");
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
                Reply::Drop => {}
                Reply::Silent(d) => std::thread::sleep(d),
            }
        }
    });
    (url, seen, h)
}

fn delivery() -> Delivery {
    Delivery {
        file_name: "30000000000001_20251001_20251031.csv".into(),
        content: b"Horodate;20000000000001\n2025-10-01T00:00:00+02:00;12,5\n".to_vec(),
        idempotency_key: "sha256:4f2a".into(),
    }
}

fn post(url: &str, read_ms: u64) -> HttpPost {
    HttpPost::new(
        url,
        Duration::from_secs(2),
        Duration::from_millis(read_ms),
        None,
    )
    .unwrap()
}

#[test]
fn retries_503s_and_a_dropped_connection_then_delivers_once_keyed() {
    let script = vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Drop,
        Reply::Status(201),
    ];
    let (url, seen, h) = server(script);
    let ch = Retrying::new(
        post(&url, 2000),
        5,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    let receipt = ch.deliver(&delivery()).unwrap();
    common::assert_contains(&receipt, &["HTTP 201", "after 4 tries"]);
    h.join().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for s in seen.iter() {
        assert_eq!(s.idempotency_key.as_deref(), Some("sha256:4f2a"));
        assert_eq!(s.body, delivery().content);
        assert!(s
            .content_disposition
            .as_deref()
            .unwrap()
            .contains("30000000000001_20251001_20251031.csv"));
    }
}

#[test]
fn a_400_is_permanent_and_not_retried() {
    let (url, seen, h) = server(vec![Reply::Status(400)]);
    let ch = Retrying::new(
        post(&url, 2000),
        5,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    match ch.deliver(&delivery()) {
        Err(DeliveryError::Permanent(m)) => assert!(m.contains("HTTP 400"), "{m}"),
        other => panic!("{other:?}"),
    }
    h.join().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn single_tries_classify_429_timeouts_and_refused_connections_as_transient() {
    let (url, _, h) = server(vec![
        Reply::Status(429),
        Reply::Silent(Duration::from_secs(3)),
    ]);
    let ch = post(&url, 200);
    assert!(matches!(
        ch.deliver(&delivery()),
        Err(DeliveryError::Transient(m)) if m.contains("429")
    ));
    let t0 = std::time::Instant::now();
    assert!(matches!(
        ch.deliver(&delivery()),
        Err(DeliveryError::Transient(_))
    ));
    // The 200 ms read timeout, not the server's 3 s of silence; loose enough
    // for a loaded machine.
    assert!(
        t0.elapsed() < Duration::from_millis(2_500),
        "read timeout not applied"
    );
    h.join().unwrap();
    // The server is gone: connection refused.
    assert!(matches!(
        ch.deliver(&delivery()),
        Err(DeliveryError::Transient(_))
    ));
    // A retried transient failure that never clears ends as transient.
    let r = Retrying::new(ch, 2, Duration::from_millis(10), Duration::from_millis(10));
    assert!(matches!(
        r.deliver(&delivery()),
        Err(DeliveryError::Transient(_))
    ));
}
