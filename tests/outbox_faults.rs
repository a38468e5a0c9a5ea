//! The outbox against a receiver on 127.0.0.1 reached through a URL that
//! carries credentials, and against settings at the edge of what a duration
//! holds. Checked on the values the ledger stores.

use chrono::Duration;
use ped::dso::channels::HttpPost;
use ped::dso::delivery::{Deliver, Delivery, DeliveryError};
use ped::ledger::outbox::{self, AttemptResult, Backoff};
use std::io::{Read, Write};

mod common;

/// Answers the i-th connection with `replies[i]` (status, body), then stops.
fn receiver(
    replies: Vec<(u16, &'static str)>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        for (code, body) in replies {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            common::read_request(&mut s);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    });
    (addr, h)
}

fn ledger_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        all.extend(std::fs::read(e.expect("entry").path()).unwrap_or_default());
    }
    all
}

#[test]
fn credentials_in_the_delivery_url_never_reach_the_outbox() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("ledger");
    std::fs::create_dir(&db).expect("mkdir");
    let (mut l, now) = common::ledger_with_one_key_file(&db.join("l.sqlite"));
    let (addr, h) = receiver(vec![(503, "busy"), (403, "no such operation")]);
    let url = format!("http://ped-user:s3cr3t-pw@{addr}/keys");
    let s = std::time::Duration::from_secs(5);
    let post = HttpPost::new(&url, s, s, None).expect("channel");
    let backoff = Backoff::default();

    let a = outbox::deliver_due(&mut l, &post, now, &backoff).expect("outbox");
    assert_eq!(a[0].result, AttemptResult::Retry);
    let e = outbox::entries(&mut l).expect("entries");
    assert_eq!(
        e[0].last_error.as_deref(),
        Some(format!("HTTP 503 from http://***@{addr}/keys: busy").as_str())
    );
    let a = outbox::deliver_due(&mut l, &post, now + Duration::hours(1), &backoff).expect("outbox");
    assert_eq!(a[0].result, AttemptResult::Failed);
    let e = outbox::entries(&mut l).expect("entries");
    assert_eq!(
        e[0].last_error.as_deref(),
        Some(format!("HTTP 403 from http://***@{addr}/keys: no such operation").as_str())
    );
    h.join().expect("receiver");
    drop(l);
    let bytes = ledger_bytes(&db);
    assert!(
        !bytes.windows(9).any(|w| w == b"s3cr3t-pw"),
        "the password is in the ledger's files"
    );
}

/// `backoff_base_s = backoff_cap_s = 1e13`: the next try is beyond any
/// date, so the failure is recorded and the file waits for a person (or a
/// restart with sane settings) instead of being retried every second.
#[test]
fn a_backoff_beyond_any_date_records_the_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut l, now) = common::ledger_with_one_key_file(&tmp.path().join("l.sqlite"));
    const BUSY: common::Failing = common::Failing {
        channel: "busy",
        error: || DeliveryError::Transient("HTTP 503: busy".into()),
    };
    let backoff = Backoff {
        base: Duration::seconds(10_000_000_000_000),
        cap: Duration::seconds(10_000_000_000_000),
    };
    let a = outbox::deliver_due(&mut l, &BUSY, now, &backoff).expect("outbox");
    assert_eq!(a[0].result, AttemptResult::Retry);
    let e = outbox::entries(&mut l).expect("entries");
    assert_eq!((e[0].attempts, e[0].state.as_str()), (1, "pending"));
    assert_eq!(e[0].last_error.as_deref(), Some("HTTP 503: busy"));
    let later =
        outbox::deliver_due(&mut l, &BUSY, now + Duration::seconds(1), &backoff).expect("outbox");
    assert!(later.is_empty(), "retried a second later: {later:?}");
}

/// A receiver that answers one byte every 50 ms: never idle long enough for
/// a per-read timeout of 0.5 s, 40 s in all if nothing stops the client. The
/// POST's deadline (0.5 s) ends it as a transient failure.
#[test]
fn a_receiver_that_trickles_its_answer_cannot_hold_a_post_past_the_deadline() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let h = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 800\r\n\r\n";
        for b in head.iter().chain([b'x'; 800].iter()) {
            if flag.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    let post = HttpPost::new(
        &format!("http://{addr}/keys"),
        std::time::Duration::from_secs(2),
        std::time::Duration::from_millis(500),
        None,
    )
    .expect("channel");
    let d = Delivery {
        file_name: "F.csv".into(),
        content: b"rows".to_vec(),
        idempotency_key: "k".into(),
    };
    let started = std::time::Instant::now();
    let r = post.deliver(&d);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    h.join().expect("receiver");
    assert!(matches!(&r, Err(DeliveryError::Transient(_))), "{r:?}");
    // Far below the 40 s the trickle would last.
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
}
