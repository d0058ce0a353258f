//! `http_query`: the small parsers that read attacker-chosen strings
//! outside the request head: `Request::query_param` (the WebSocket
//! `?token=` and the setup-link token, decoded by `form_urlencoded`) and
//! `http::bearer` (the `Authorization` header).
//!
//! Checks, for the input as a string (invalid UTF-8 replaced):
//! * `query_param` never panics on any query, never returns a value longer
//!   than the query, gives back a value without `%` or `+` as it is, and
//!   returns any string that was encoded as a parameter's value by a
//!   reference encoder (and finds it by any encoded name);
//! * `bearer` returns a trimmed, non-empty part of its input only for the
//!   `Bearer` scheme, and gives back any token sent as `Bearer <token>`
//!   (trimmed).
//!
//! The summary `b<0|1>t<0|1>` says whether `bearer` and
//! `query_param("token")` found something.

use sync_server::http::bearer;
use sync_server::http::Request;

pub fn run(data: &[u8]) -> String {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    let enc = encode(s, data.first().is_some_and(|b| b & 1 != 0));

    // query_param on the raw input and on encoded parameters
    let raw = Request {
        query: Some(s.to_owned()),
        ..Request::default()
    };
    let token = raw.query_param("token");
    for name in ["", "a", "token", s] {
        if let Some(v) = raw.query_param(name) {
            assert!(v.len() <= s.len(), "{v:?} out of {s:?}");
        }
    }
    if !s.contains(['%', '+', '&', '=']) {
        let plain = Request {
            query: Some(format!("token={s}")),
            ..Request::default()
        };
        assert_eq!(plain.query_param("token").as_deref(), Some(s));
    }
    let built = Request {
        query: Some(format!("zz_q=0&token={enc}&{enc}=v")),
        ..Request::default()
    };
    assert_eq!(built.query_param("token").as_deref(), Some(s));
    if s != "zz_q" && s != "token" {
        assert_eq!(built.query_param(s).as_deref(), Some("v"));
    }

    // bearer
    let b = bearer(Some(s));
    if let Some(t) = b {
        assert!(!t.is_empty() && t.trim() == t, "token {t:?}");
        assert!(s.contains(t));
        let scheme = s.trim_start().get(..6).unwrap_or_default();
        assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme of {s:?}");
    }
    let sent = format!("Bearer {s}");
    let want = (!s.trim().is_empty()).then(|| s.trim());
    assert_eq!(bearer(Some(&sent)), want, "token {s:?} lost");

    format!("b{}t{}", u8::from(b.is_some()), u8::from(token.is_some()))
}

/// Percent-encodes every byte outside the unreserved set, in upper or
/// lower case hex.
fn encode(s: &str, lower: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
