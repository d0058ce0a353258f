//! What the two MongoDB users (the accounts store and the room store) share:
//! how a client is built (timeouts short enough that an outage is seen in
//! seconds, not the driver's 30) and how a driver error is told to the log.

use std::time::Duration;

use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::sync::Client;

pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_millis(2000);
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Builds the client for `uri`, keeping any timeout the URI sets. For
/// `mongodb://` this does no I/O; for `mongodb+srv://` it resolves DNS, so
/// only worker threads call it.
pub fn client(uri: &str) -> mongodb::error::Result<Client> {
    let mut opts = ClientOptions::parse(uri).run()?;
    opts.server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    opts.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
    opts.app_name
        .get_or_insert_with(|| "khun-phaen-sync-server".to_string());
    Client::with_options(opts)
}

/// A one-line description of a driver error for the log. Server-side
/// errors are reduced to their code: their messages can quote document
/// values (a duplicate key names the email). Connection-level messages name
/// hosts and error kinds only.
pub fn short(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        ErrorKind::Command(c) => format!("server error {} ({})", c.code, c.code_name),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!("write error {}", w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern error {}", w.code)
        }
        _ => {
            let s = e.kind.to_string();
            let s = s.lines().next().unwrap_or("");
            let mut end = s.len().min(300);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }
    }
}
