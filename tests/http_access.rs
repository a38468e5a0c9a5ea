//! Who may see what over HTTP: beyond loopback, the status page,
//! `/status.json` and participant series need the token of `http.token_file`;
//! on loopback, a `Host` that is not a loopback name is refused. Driven
//! through ped's router itself (no socket beyond 127.0.0.1 is opened).

use axum::http::{header, Request, StatusCode};
use axum::Router;
use ped::http::auth::Token;
use ped::http::{router, without_participants, Access, Backend};
use std::sync::Arc;
use tower::ServiceExt as _;

struct Fake;
impl Backend for Fake {
    fn metrics(&self) -> String {
        "# HELP ped_x x\n# TYPE ped_x gauge\nped_x{site=\"s\"} 1\n# HELP ped_participant_key_ratio k\n# TYPE ped_participant_key_ratio gauge\nped_participant_key_ratio{participant=\"H-001\",site=\"s\"} 0.5\n".to_string()
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    fn status_json(&self) -> String {
        "{\"site\":\"t\"}".into()
    }
}

fn body(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

async fn call(app: Router, host: &str, path: &str, auth: Option<&str>) -> (StatusCode, String) {
    let mut r = Request::builder().uri(path).header(header::HOST, host);
    if let Some(a) = auth {
        r = r.header(header::AUTHORIZATION, a);
    }
    let r = r.body(axum::body::Body::empty()).unwrap();
    let resp = app.oneshot(r).await.unwrap();
    let code = resp.status();
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (code, body(&b))
}

fn with_token() -> (tempfile::TempDir, Token) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let t = Token::load(&p).unwrap();
    (dir, t)
}

#[tokio::test]
async fn beyond_loopback_personal_data_needs_the_token() {
    let (_d, token) = with_token();
    let backend = Arc::new(Fake);
    let call = |app: Router, path: &'static str, auth: Option<&str>| {
        let auth = auth.map(str::to_string);
        async move { call(app, "10.0.0.5:9464", path, auth.as_deref()).await }
    };
    let access = Access {
        token: Some(token),
        participant_metrics: true,
        allowed_hosts: Vec::new(),
    };
    let app = router(backend.clone(), access.clone(), false);
    for path in ["/", "/status.json"] {
        let (code, b) = call(app.clone(), path, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!b.contains("site"), "{path}: {b}");
        let (code, _) = call(app.clone(), path, Some("Bearer 0123456789abcdef0124")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
        let (code, _) = call(app.clone(), path, Some("Bearer 0123456789abcdef0123")).await;
        assert_eq!(code, StatusCode::OK, "{path}");
    }
    // A browser's Basic credentials carry the token as the password.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("manager:0123456789abcdef0123");
    let basic = format!("Basic {basic}");
    let (code, b) = call(app.clone(), "/status.json", Some(&basic)).await;
    assert_eq!((code, b.as_str()), (StatusCode::OK, "{\"site\":\"t\"}"));
    // /metrics: the site's series for anyone, the participants' with the token.
    let (code, b) = call(app.clone(), "/metrics", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(b, without_participants(&backend.metrics()));
    let (_, b) = call(app.clone(), "/metrics", Some("Bearer 0123456789abcdef0123")).await;
    assert_eq!(b, backend.metrics());
    let (code, _) = call(app.clone(), "/health", None).await;
    assert_eq!(code, StatusCode::OK);
    // participant_metrics = false: never, token or not.
    let off = router(
        backend.clone(),
        Access {
            participant_metrics: false,
            ..access
        },
        false,
    );
    let (_, b) = call(off, "/metrics", Some("Bearer 0123456789abcdef0123")).await;
    assert_eq!(b, without_participants(&backend.metrics()));
    // No token configured: personal data is refused to everyone.
    let closed = router(backend.clone(), Access::default(), false);
    let (code, b) = call(closed, "/status.json", Some("Bearer 0123456789abcdef0123")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(b.contains("http.token_file"), "{b}");
}

#[tokio::test]
async fn on_loopback_everything_is_served_to_loopback_names_only() {
    let backend = Arc::new(Fake);
    let app = router(
        backend.clone(),
        Access {
            participant_metrics: true,
            ..Access::default()
        },
        true,
    );
    let (code, b) = call(app.clone(), "127.0.0.1:9464", "/status.json", None).await;
    assert_eq!((code, b.as_str()), (StatusCode::OK, "{\"site\":\"t\"}"));
    let (_, b) = call(app.clone(), "localhost:9464", "/metrics", None).await;
    assert_eq!(b, backend.metrics());
    // A page from elsewhere, through a DNS name rebound to 127.0.0.1.
    let (code, b) = call(app.clone(), "rebound.example:9464", "/status.json", None).await;
    assert_eq!(code, StatusCode::MISDIRECTED_REQUEST);
    assert!(!b.contains("site"), "{b}");
}
