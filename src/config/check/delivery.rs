use super::super::*;

/// The host part of an `http(s)://host[:port]/…` URL.
fn url_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// Reads `delivery.token_file`; the error is a config problem naming key,
/// file and fix. The token itself never appears in a message.
pub fn read_delivery_token(path: &std::path::Path) -> Result<String, Problem> {
    // A secret only its owner may read, as for http.token_file.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(problem(
                "delivery.token_file",
                format!(
                    "{}: other users can read it (mode {mode:o})",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            ));
        }
    }
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(problem(
            "delivery.token_file",
            format!("{} is empty", path.display()),
            "put the DSO API token (one line) in that file",
        )),
        Err(e) => Err(problem(
            "delivery.token_file",
            format!("{} cannot be read: {e}", path.display()),
            "create the file with the token (one line), readable by the ped user, or remove token_file",
        )),
    }
}

pub(super) fn check_delivery(d: &DeliverySection, p: &mut Vec<Problem>) {
    match d.kind {
        DeliveryKind::Folder => {
            match &d.dir {
                None => p.push(problem(
                    "delivery.dir",
                    "kind = \"folder\" needs a folder",
                    "add dir = \"out/spool\" (created if missing)",
                )),
                Some(dir) if dir.is_file() => p.push(problem(
                    "delivery.dir",
                    format!("{} is a file", dir.display()),
                    "give a folder, e.g. out/spool",
                )),
                Some(_) => {}
            }
            if d.url.is_some() || d.token_file.is_some() {
                p.push(problem(
                    "delivery.url",
                    "url and token_file are for kind = \"https\"",
                    "remove them, or set kind = \"https\"",
                ));
            }
        }
        DeliveryKind::Https => {
            match d.url.as_deref() {
                None => p.push(problem(
                    "delivery.url",
                    "kind = \"https\" needs a url",
                    "add url = \"https://…\" (the DSO or relay endpoint)",
                )),
                Some(url) => {
                    // Problems are printed and logged: never the URL's credentials.
                    let shown = crate::dso::channels::redact_url(url);
                    let local = |host: &str| matches!(host, "127.0.0.1" | "localhost" | "::1");
                    if let Some(rest) = url.strip_prefix("https://") {
                        if url_host(rest).is_empty() {
                            p.push(problem(
                                "delivery.url",
                                format!("`{shown}` has no host"),
                                "use https://host/path",
                            ));
                        }
                    } else if let Some(rest) = url.strip_prefix("http://") {
                        if !local(url_host(rest)) {
                            p.push(problem(
                                "delivery.url",
                                format!("`{shown}` is plain http to a remote host: key files and token would travel in clear"),
                                "use https://, or http:// only to 127.0.0.1/localhost",
                            ));
                        }
                    } else {
                        p.push(problem(
                            "delivery.url",
                            format!("`{shown}` is not an http(s) URL"),
                            "use https://host/path",
                        ));
                    }
                }
            }
            if d.dir.is_some() {
                p.push(problem(
                    "delivery.dir",
                    "dir is for kind = \"folder\"",
                    "remove it, or set kind = \"folder\"",
                ));
            }
            if let Some(f) = &d.token_file {
                if let Err(e) = read_delivery_token(f) {
                    p.push(e);
                }
            }
        }
    }
    if !(d.timeout_s.is_finite() && d.timeout_s > 0.0 && d.timeout_s <= 600.0) {
        p.push(problem(
            "delivery.timeout_s",
            format!("{} is not in (0, 600]", d.timeout_s),
            "use e.g. timeout_s = 30",
        ));
    }
    if d.backoff_base_s == 0 || d.backoff_cap_s < d.backoff_base_s {
        p.push(problem(
            "delivery.backoff_base_s",
            format!(
                "backoff_base_s = {} and backoff_cap_s = {}: need 0 < base ≤ cap",
                d.backoff_base_s, d.backoff_cap_s
            ),
            "use e.g. backoff_base_s = 60, backoff_cap_s = 3600",
        ));
    }
}
