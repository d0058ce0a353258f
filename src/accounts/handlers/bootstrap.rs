//! The maintenance thread: connects, creates the indexes and the
//! `INITIAL_ADMIN_*` user, then keeps the database health fresh.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::setup::new_user;
use super::Service;
use crate::accounts::model::{Profile, ROLE_ADMIN};
use crate::accounts::password;
use crate::accounts::store::{Store, StoreError};

/// Maintenance: how often to check the database when it answers / when not.
const CHECK_EVERY_OK: Duration = Duration::from_secs(5);
const CHECK_EVERY_DOWN: Duration = Duration::from_secs(1);

impl Service {
    /// Connects, creates indexes and the bootstrap admin (retrying until the
    /// database answers), then checks reachability every few seconds so
    /// `/health` is fresh even when no requests come. Returns when `stop`
    /// receives or is dropped.
    pub fn maintain(&self, stop: &Receiver<()>) {
        loop {
            self.maintenance_round();
            let wait = if self.health.is_ok() && self.ready.load(Ordering::Acquire) {
                CHECK_EVERY_OK
            } else {
                CHECK_EVERY_DOWN
            };
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    pub(super) fn maintenance_round(&self) {
        let store = match self.store.get() {
            Some(s) => s,
            None => match Store::connect(
                &self.cfg.mongodb_uri,
                &self.cfg.db_name,
                self.health.clone(),
            ) {
                Ok(s) => self.store.get_or_init(|| s),
                Err(e) => {
                    let why = match e {
                        StoreError::Unavailable(w) | StoreError::Other(w) => w,
                        StoreError::Duplicate => String::new(),
                    };
                    self.health
                        .set_down(&format!("cannot create the client: {why}"));
                    return;
                }
            },
        };
        if store.ping().is_err() {
            return;
        }
        if !self.ready.load(Ordering::Acquire) {
            match self.prepare(store) {
                Ok(()) => {
                    self.ready.store(true, Ordering::Release);
                    log::info!("accounts: database ready (db {:?})", self.cfg.db_name);
                }
                Err(StoreError::Unavailable(_)) => {}
                Err(StoreError::Duplicate) => {}
                Err(StoreError::Other(why)) => {
                    log::error!("accounts: database setup failed, will retry: {why}")
                }
            }
        }
    }

    /// Indexes, then the `INITIAL_ADMIN_*` user if there are no users.
    pub(super) fn prepare(&self, store: &Store) -> Result<(), StoreError> {
        store.ensure_indexes()?;
        let Some(admin) = &self.cfg.initial_admin else {
            return Ok(());
        };
        if store.any_users()? {
            return Ok(());
        }
        let hash = password::hash(&admin.password).map_err(StoreError::Other)?;
        let profile = Profile {
            nickname: admin.nickname.clone(),
            ..Profile::default()
        };
        let user = new_user(
            admin.email.clone(),
            ROLE_ADMIN.to_string(),
            Some(hash),
            None,
            None,
            profile,
        );
        // Someone (another instance, a setup-token invite) may be faster;
        // then there is nothing left to do.
        if !store.claim_first_user()? || store.any_users()? {
            return Ok(());
        }
        match store.insert(&user) {
            Ok(()) => {
                log::info!("accounts: created the initial admin (id {})", user.id_hex());
                Ok(())
            }
            Err(e) => {
                let _ = store.release_first_user();
                Err(e)
            }
        }
    }
}
