//! Error answers of the accounts routes: the typed [`Fail`] every handler
//! returns, its fixed sentences, and its conversion to the wire reply.

use serde_json::Value;

use crate::accounts::store::StoreError;
use crate::accounts::HttpReply;

pub(super) const MSG_UNAVAILABLE: &str = "The accounts database is unavailable; try again shortly";
pub(super) const MSG_AUTH_REQUIRED: &str = "Authentication required";
pub(super) const MSG_BAD_TOKEN: &str = "Invalid or expired token";
pub(super) const MSG_BAD_LOGIN: &str = "Invalid email or password";
pub(super) const MSG_ADMIN_ONLY: &str = "Admin access required";
pub(super) const MSG_NO_USER: &str = "User not found";
pub(super) const MSG_DUPLICATE: &str = "A user with this email already exists";
pub(super) const MSG_BAD_SETUP_TOKEN: &str = "Invalid, expired or already used setup token";
pub(super) const MSG_FIRST_USER_TAKEN: &str =
    "The first user has already been created; sign in as an admin to invite more";

/// An error answer: status and the sentence for `{"success":false,"error"}`.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) status: u16,
    pub(super) msg: String,
    pub(super) retry_after: Option<u64>,
    pub(super) allow: Option<&'static str>,
}

pub(super) fn fail(status: u16, msg: impl Into<String>) -> Fail {
    Fail {
        status,
        msg: msg.into(),
        retry_after: None,
        allow: None,
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        match e {
            StoreError::Duplicate => fail(409, MSG_DUPLICATE),
            StoreError::Unavailable(_) => fail(503, MSG_UNAVAILABLE),
            StoreError::Other(why) => {
                log::error!("accounts: database error: {why}");
                fail(503, MSG_UNAVAILABLE)
            }
        }
    }
}

pub(super) type Answer = Result<Value, Fail>;

impl From<Fail> for HttpReply {
    fn from(f: Fail) -> HttpReply {
        crate::http::Answer {
            retry_after: f.retry_after,
            allow: f.allow,
            ..crate::http::Answer::error(f.status, &f.msg)
        }
        .into()
    }
}

/// The 503 of a job that was not run because nobody waits for it any more.
pub fn unavailable_reply() -> HttpReply {
    fail(503, MSG_UNAVAILABLE).into()
}

pub fn internal_error() -> HttpReply {
    fail(500, "Internal error").into()
}

pub(super) fn internal(why: String) -> Fail {
    log::error!("accounts: {why}");
    fail(500, "Internal error")
}
