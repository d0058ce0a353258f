//! Stand-ins for a build without the `accounts` feature (no MongoDB driver,
//! argon2 or JWT code): the fuzz targets use it to stay small.
//!
//! Such a build serves rooms exactly as a full build does with
//! `MONGODB_URI` unset; asking it for accounts is a start-up error rather
//! than a silent 503.

use super::{Job, Reply};
use std::sync::Arc;

/// Never constructed: accounts cannot be configured in this build.
#[derive(Clone, Debug)]
pub struct AccountsConfig {
    never: std::convert::Infallible,
}

impl AccountsConfig {
    /// `Ok(None)` unless the environment asks for accounts.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<AccountsConfig>, String> {
        for var in ["MONGODB_URI", "REQUIRE_AUTH"] {
            if get(var).is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
                return Err(format!(
                    "{var} is set but this binary was built without the `accounts` feature"
                ));
            }
        }
        Ok(None)
    }

    pub fn require_auth(&self) -> bool {
        match self.never {}
    }
}

/// Never constructed; see [`AccountsConfig`].
pub struct Accounts {
    never: std::convert::Infallible,
}

impl Accounts {
    pub fn start(cfg: AccountsConfig, _waker: Arc<mio::Waker>) -> Result<Accounts, String> {
        match cfg.never {}
    }
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, _tag: u64, _job: Job) -> Result<(), Job> {
        match self.never {}
    }
    pub fn drain(&self, _f: impl FnMut(u64, Reply)) {
        match self.never {}
    }
    pub fn store_status(&self) -> &'static str {
        match self.never {}
    }
    pub fn figures(&self) -> crate::ops::metrics::AccountsFigures {
        match self.never {}
    }
    pub fn note_no_answer(&self) {
        match self.never {}
    }
    pub fn shutdown(self) {
        match self.never {}
    }
}
