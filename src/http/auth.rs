//! Bearer tokens for HTTP endpoints that serve personal data or change state.
//!
//! Beyond loopback, the status page, `/status.json` and participant series need
//! the token from `http.token_file` ([`authorized_value`], used by `http`). An
//! endpoint that changes state (a manual setpoint, a resend of key files, …) must
//! check it too and answer 401 without it; with no token configured, such
//! endpoints stay disabled.
//! The comparison takes the same time whatever the bytes, so the token cannot be
//! guessed a byte at a time from response times.

use std::path::{Path, PathBuf};

/// Shortest token accepted: 16 bytes of text, e.g. `openssl rand -hex 16` gives 32.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("http.token_file {path}: cannot read it: {message} (fix: create it with one line, e.g. `openssl rand -hex 32 > {path}`)")]
    Read { path: PathBuf, message: String },
    #[error("http.token_file {path}: the token has {len} characters, fewer than {MIN_TOKEN_LEN} (fix: use e.g. `openssl rand -hex 32`)")]
    TooShort { path: PathBuf, len: usize },
    #[error(
        "http.token_file {path}: other users can read it (mode {mode:o}) (fix: chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// A token read from `http.token_file`. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

impl Token {
    /// Reads the first line of `path`: a secret only its owner may read.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let read_err = |e: std::io::Error| TokenError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_path_buf(),
                len: token.len(),
            });
        }
        Ok(Token(token))
    }
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box: the optimiser must not turn the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

/// Whether a request head (request line and headers, as received) carries
/// `Authorization: Bearer <token>` with the configured token. No token configured:
/// never authorized, so state-changing endpoints are off by default.
pub fn authorized(request_head: &str, token: Option<&Token>) -> bool {
    let Some(token) = token else {
        return false;
    };
    request_head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .any(|(_, value)| {
            let value = value.trim();
            match value.split_once(' ') {
                Some((scheme, _)) if scheme.eq_ignore_ascii_case("bearer") => {
                    authorized_value(value, token)
                }
                _ => false,
            }
        })
}

/// Whether one `Authorization` header value carries the token: `Bearer <token>`
/// (Prometheus, curl), or `Basic` with the token as the password (a browser
/// asked for credentials; the user name is ignored).
pub fn authorized_value(value: &str, token: &Token) -> bool {
    let value = value.trim();
    let Some((scheme, presented)) = value.split_once(' ') else {
        return false;
    };
    let presented = presented.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return constant_time_eq(presented.as_bytes(), token.0.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(presented) else {
            return false;
        };
        return match decoded.iter().position(|b| *b == b':') {
            Some(k) => constant_time_eq(&decoded[k + 1..], token.0.as_bytes()),
            None => false,
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        (dir, p)
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
    }

    #[test]
    fn only_the_right_bearer_token_is_authorized() {
        let (_d, p) = token_file("0123456789abcdef0123\n", 0o600);
        let t = Token::load(&p).unwrap();
        let head = |auth: &str| format!("POST /x HTTP/1.1\r\nHost: a\r\n{auth}\r\n\r\n");
        assert!(authorized(
            &head("Authorization: Bearer 0123456789abcdef0123"),
            Some(&t)
        ));
        assert!(authorized(
            &head("authorization:   bearer 0123456789abcdef0123  "),
            Some(&t)
        ));
        assert!(!authorized(
            &head("Authorization: Bearer 0123456789abcdef0124"),
            Some(&t)
        ));
        assert!(!authorized(
            &head("Authorization: Basic 0123456789abcdef0123"),
            Some(&t)
        ));
        assert!(!authorized(
            &head("X-Token: 0123456789abcdef0123"),
            Some(&t)
        ));
        assert!(!authorized(&head(""), Some(&t)));
        // The request line is not a header, whatever it contains.
        assert!(!authorized(
            "Authorization: Bearer 0123456789abcdef0123\r\n\r\n",
            Some(&t)
        ));
        // No token configured: state-changing endpoints are closed.
        assert!(!authorized(
            &head("Authorization: Bearer 0123456789abcdef0123"),
            None
        ));
        assert!(!format!("{t:?}").contains("0123"), "Debug hides the secret");
    }

    #[test]
    fn bad_token_files_name_the_key_and_the_fix() {
        let (_d, p) = token_file("short\n", 0o600);
        let e = Token::load(&p).unwrap_err();
        assert!(matches!(e, TokenError::TooShort { len: 5, .. }), "{e}");
        assert!(e.to_string().contains("http.token_file") && e.to_string().contains("fix:"));
        let e = Token::load(Path::new("/nonexistent/ped-token")).unwrap_err();
        assert!(matches!(e, TokenError::Read { .. }), "{e}");
        #[cfg(unix)]
        {
            let (_d, p) = token_file("0123456789abcdef0123\n", 0o644);
            let e = Token::load(&p).unwrap_err();
            assert!(matches!(e, TokenError::Exposed { mode: 0o644, .. }), "{e}");
            assert!(e.to_string().contains("chmod 600"));
        }
    }
}
