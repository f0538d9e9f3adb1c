//! The URL and header details Consul gets from Go's net/http: path
//! cleaning, query decoding and encoding, and where the ACL token is read.

use hyper::header::HeaderMap;

/// Go's `path.Clean` as ServeMux applies it (a trailing slash is kept).
pub(crate) fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// `?token=` first, then `X-Consul-Token`, then `Authorization: Bearer`, as
/// Consul looks for it; an empty one is no token.
pub(crate) fn find_token(params: &[(String, String)], headers: &HeaderMap) -> Option<String> {
    if let Some((_, t)) = params.iter().find(|(k, _)| k == "token") {
        if !t.is_empty() {
            return Some(t.clone());
        }
    }
    if let Some(t) = headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) {
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    let auth = headers.get("Authorization").and_then(|v| v.to_str().ok())?;
    let (scheme, value) = auth.trim().split_once(char::is_whitespace)?;
    let value = value.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !value.is_empty()).then(|| value.to_string())
}

/// The query as logged: a `token` value becomes `<hidden>`, as in Consul's
/// own request log.
pub(crate) fn redact_token(raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    raw.split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            if form_decode(key) == "token" {
                "token=<hidden>".to_string()
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(pair), String::new()),
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// `%XX` decoding of a path or query part (an invalid escape is kept).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path("/v1/kv/a"), "/v1/kv/a");
        assert_eq!(clean_path("/v1/kv//a"), "/v1/kv/a");
        assert_eq!(clean_path("/v1/kv/a/"), "/v1/kv/a/");
        assert_eq!(clean_path("/v1/kv/./a/../b"), "/v1/kv/b");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(form_decode("a+b"), "a b");
        assert_eq!(
            redact_token("index=3&token=s3cret"),
            "index=3&token=<hidden>"
        );
    }
}
