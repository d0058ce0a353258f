//! `LOG_FORMAT=json`: one JSON object per log line, for journald or Loki.
//!
//! Each line is `{"time","level","target","conn"?,"message"}`. The server's
//! messages about one connection start with `[<key>] `; that prefix becomes
//! the `conn` field (a slab key: it names a connection, not a person). What
//! may be logged at all is decided where the log calls are (tokens,
//! passwords and documents never are); this writer adds nothing secret.
//!
//! Invariant: a line is written with one `write_all` on a locked stderr, so
//! lines from the worker threads never interleave.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

/// Targets whose chatter stays out of the log (the same as the text format).
const IGNORED: &[&str] = &["mongodb", "hickory", "rustls"];

pub struct JsonLogger {
    level: LevelFilter,
}

/// Installs the JSON logger as the `log` backend.
pub fn init(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(JsonLogger { level }))?;
    log::set_max_level(level);
    Ok(())
}

/// Splits `[123] rest` into the connection key and the rest.
fn split_conn(message: &str) -> (Option<u64>, &str) {
    if let Some(rest) = message.strip_prefix('[') {
        if let Some((key, tail)) = rest.split_once("] ") {
            if let Ok(k) = key.parse::<u64>() {
                return (Some(k), tail);
            }
        }
    }
    (None, message)
}

/// One log line (without the newline).
pub fn format_line(
    time: std::time::SystemTime,
    level: log::Level,
    target: &str,
    message: &str,
) -> String {
    let (conn, message) = split_conn(message);
    let mut v = serde_json::json!({
        "time": crate::util::rfc3339(time),
        "level": level.as_str().to_ascii_lowercase(),
        "target": target,
    });
    if let Some(k) = conn {
        v["conn"] = k.into();
    }
    v["message"] = message.into();
    v.to_string()
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !IGNORED.iter().any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let mut line = format_line(
            std::time::SystemTime::now(),
            record.level(),
            record.target(),
            &message,
        );
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_the_connection_apart() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let line = format_line(
            t,
            log::Level::Warn,
            "sync_server::server",
            "[42] write error: \"x\"\nnext",
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "sync_server::server");
        assert_eq!(v["conn"], 42);
        assert_eq!(v["message"], "write error: \"x\"\nnext");
        let plain = format_line(t, log::Level::Info, "t", "[not a key] hello");
        let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert!(v.get("conn").is_none());
        assert_eq!(v["message"], "[not a key] hello");
    }
}
