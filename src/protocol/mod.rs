//! Client → server messages of the WebSocket protocol (§2), decoded without
//! copying the large fields.
//!
//! `data`, `document` and `metadata` are kept as borrowed raw JSON: the
//! server forwards them verbatim, so a 10 MiB document is parsed once for
//! validity and never copied into an owned string.

pub mod out;

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Largest serialized `metadata` accepted at join.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Longest `peer_id`, in characters.
pub const MAX_PEER_ID_CHARS: usize = 128;
/// Deepest nesting of arrays and objects inside `metadata` (the value
/// itself is level 1). Every joiner's client parses it; some parsers stop,
/// or crash, far below what 4 KiB of brackets can reach.
pub const MAX_METADATA_DEPTH: usize = 16;

/// A `join`'s `since`: the last position of the room's stream the client
/// saw, to be caught up from (§6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since<'a> {
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    pub seq: u64,
}

/// A decoded client action.
#[derive(Debug)]
pub enum Action<'a> {
    Join {
        room_code: Cow<'a, str>,
        peer_id: Cow<'a, str>,
        is_host: bool,
        /// Raw JSON, `None` when absent or `null`.
        metadata: Option<&'a RawValue>,
        token: Option<Cow<'a, str>>,
        /// Where a reconnecting client left the stream.
        since: Option<Since<'a>>,
    },
    /// `data` is a raw JSON string literal, quotes included.
    Broadcast {
        data: &'a RawValue,
    },
    /// `document` is a raw JSON string literal, quotes included.
    SyncDocument {
        document: &'a RawValue,
    },
    RequestSync,
    Leave,
    Ping,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    peer_id: Option<Cow<'a, str>>,
    is_host: Option<bool>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    document: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
}

/// serde's message without its position suffix, which is noise to a
/// browser developer when the message is one line. Every JSON body and
/// message the server reads reports its errors through this.
pub fn detail(e: serde_json::Error) -> String {
    let mut s = e.to_string();
    if let Some(i) = s.find(" at line ") {
        s.truncate(i);
    }
    s
}

/// Decodes one text message. The error is the detail that follows
/// `Invalid message format: ` in the reply.
pub fn decode<'a>(text: &'a str) -> Result<Action<'a>, String> {
    let w: Wire<'a> = serde_json::from_str(text).map_err(detail)?;
    let Some(action) = w.action else {
        return Err("missing field `action`".into());
    };
    let string_field = |name: &str, v: Option<&'a RawValue>| -> Result<&'a RawValue, String> {
        match v {
            Some(raw) if raw.get().starts_with('"') => Ok(raw),
            Some(_) => Err(format!("`{name}` must be a string")),
            None => Err(format!("missing field `{name}`")),
        }
    };
    Ok(match &*action {
        "join" => {
            let room_code = w.room_code.ok_or("missing field `room_code`")?;
            let peer_id = w.peer_id.ok_or("missing field `peer_id`")?;
            let chars = peer_id.chars().count();
            if chars == 0 || chars > MAX_PEER_ID_CHARS {
                return Err(format!(
                    "`peer_id` must be 1 to {MAX_PEER_ID_CHARS} characters"
                ));
            }
            if peer_id.chars().any(char::is_control) {
                return Err("`peer_id` must not contain control characters".into());
            }
            let metadata = w.metadata.filter(|m| m.get() != "null");
            if metadata.is_some_and(|m| m.get().len() > MAX_METADATA_BYTES) {
                return Err(format!(
                    "`metadata` must be at most {MAX_METADATA_BYTES} bytes"
                ));
            }
            if metadata.is_some_and(|m| json_depth(m.get()) > MAX_METADATA_DEPTH) {
                return Err(format!(
                    "`metadata` must not nest deeper than {MAX_METADATA_DEPTH} levels"
                ));
            }
            let since = match w.since.filter(|s| s.get() != "null") {
                None => None,
                Some(raw) => Some(serde_json::from_str::<Since<'a>>(raw.get()).map_err(|e| {
                    format!(
                        "`since` must be {{\"epoch\": string, \"seq\": integer}} ({})",
                        detail(e)
                    )
                })?),
            };
            Action::Join {
                room_code,
                peer_id,
                is_host: w.is_host.unwrap_or(false),
                metadata,
                token: w.token,
                since,
            }
        }
        "broadcast" => Action::Broadcast {
            data: string_field("data", w.data)?,
        },
        "sync_document" => Action::SyncDocument {
            document: string_field("document", w.document)?,
        },
        "request_sync" => Action::RequestSync,
        "leave" => Action::Leave,
        "ping" => Action::Ping,
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(format!("unknown action `{shown}`"));
        }
    })
}

/// How deeply arrays and objects nest in `json` (valid JSON text): 0 for
/// a scalar, 1 for `[]` or `{}`, and so on. Brackets inside strings do not
/// count.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_action() {
        let a = decode(
            r#"{"action":"join","room_code":"R","peer_id":"p","is_host":true,"metadata":{"n":1}}"#,
        )
        .unwrap();
        match a {
            Action::Join {
                room_code,
                peer_id,
                is_host,
                metadata,
                token,
                since,
            } => {
                assert_eq!((&*room_code, &*peer_id, is_host), ("R", "p", true));
                assert!(since.is_none());
                assert_eq!(metadata.unwrap().get(), r#"{"n":1}"#);
                assert!(token.is_none());
            }
            other => panic!("{other:?}"),
        }
        match decode(r#"{"action":"broadcast","data":"a\"b"}"#).unwrap() {
            Action::Broadcast { data } => assert_eq!(data.get(), r#""a\"b""#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(r#"{"action":"sync_document","document":""}"#).unwrap(),
            Action::SyncDocument { .. }
        ));
        assert!(matches!(
            decode(r#"{"action":"request_sync"}"#).unwrap(),
            Action::RequestSync
        ));
        assert!(matches!(
            decode(r#"{"action":"leave"}"#).unwrap(),
            Action::Leave
        ));
        assert!(matches!(
            decode(r#"{"action":"ping","extra":[1,2]}"#).unwrap(),
            Action::Ping
        ));
    }

    #[test]
    fn bad_input_gives_a_detail() {
        assert!(decode("not json").is_err());
        assert!(decode("[]").is_err());
        assert!(decode(r#"{"action":"dance"}"#)
            .unwrap_err()
            .contains("unknown action"));
        assert!(decode(r#"{"action":"broadcast","data":5}"#)
            .unwrap_err()
            .contains("data"));
        assert!(decode(r#"{"action":"broadcast"}"#)
            .unwrap_err()
            .contains("data"));
        assert!(decode(r#"{"action":"join","room_code":5,"peer_id":"p"}"#).is_err());
        assert!(decode(r#"{"action":"join","room_code":"R","peer_id":""}"#).is_err());
        let long = "x".repeat(129);
        assert!(decode(&format!(
            r#"{{"action":"join","room_code":"R","peer_id":"{long}"}}"#
        ))
        .is_err());
        let meta = "y".repeat(5000);
        assert!(decode(&format!(
            r#"{{"action":"join","room_code":"R","peer_id":"p","metadata":"{meta}"}}"#
        ))
        .unwrap_err()
        .contains("metadata"));
        assert!(decode(r#"{"room_code":"R"}"#)
            .unwrap_err()
            .contains("action"));
    }

    #[test]
    fn metadata_nesting_is_bounded() {
        assert_eq!(json_depth("5"), 0);
        assert_eq!(json_depth(r#""[[{""#), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":"]]\"["}]}"#), 3);
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let join = |m: &str| {
            format!(r#"{{"action":"join","room_code":"R","peer_id":"p","metadata":{m}}}"#)
        };
        assert!(decode(&join(&nested(MAX_METADATA_DEPTH))).is_ok());
        let err = decode(&join(&nested(MAX_METADATA_DEPTH + 1))).unwrap_err();
        assert!(err.contains("nest"), "{err}");
        assert!(decode(&join(&nested(2000))).is_err());
    }

    #[test]
    fn null_metadata_is_absent() {
        match decode(r#"{"action":"join","room_code":"R","peer_id":"p","metadata":null}"#).unwrap()
        {
            Action::Join { metadata, .. } => assert!(metadata.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn join_since_is_decoded_and_checked() {
        match decode(
            r#"{"action":"join","room_code":"R","peer_id":"p","since":{"epoch":"e1","seq":7}}"#,
        )
        .unwrap()
        {
            Action::Join { since, .. } => assert_eq!(
                since,
                Some(Since {
                    epoch: "e1".into(),
                    seq: 7
                })
            ),
            other => panic!("{other:?}"),
        }
        match decode(r#"{"action":"join","room_code":"R","peer_id":"p","since":null}"#).unwrap() {
            Action::Join { since, .. } => assert!(since.is_none()),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#""e1""#,
            r#"{"epoch":"e1"}"#,
            r#"{"epoch":1,"seq":1}"#,
            r#"{"epoch":"e1","seq":-1}"#,
            r#"{"epoch":"e1","seq":1.5}"#,
            r#"{"epoch":"e1","seq":1,"extra":true}"#,
        ] {
            let text =
                format!(r#"{{"action":"join","room_code":"R","peer_id":"p","since":{bad}}}"#);
            let e = decode(&text).unwrap_err();
            assert!(e.starts_with("`since` must be"), "{bad}: {e}");
        }
    }
}
