//! The `users` collection (and the first-user claim in `meta`) over the
//! MongoDB driver's blocking (`sync`) API.
//!
//! Owns the connection options, the indexes and the classification of driver
//! errors. Every call here blocks, so only worker threads and the maintenance
//! thread may make them. Invariants:
//! - Unless the URI says otherwise, server selection gives up after 2 s and a
//!   TCP connect after 1 s, so a call against a dead database fails well
//!   inside the 5 s the protocol allows; the driver reconnects by itself.
//! - Every call records the outcome in the shared [`Health`]: success means
//!   the database answered ("ok"), a connectivity failure means
//!   "unavailable". Other errors (a duplicate key, a bad document) say
//!   nothing about reachability and leave it alone.
//! - Duplicate-key errors (code 11000) on insert and update surface as
//!   [`StoreError::Duplicate`]; the unique index on `email` is the real guard
//!   against two accounts with one address.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mongo::short;
use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::sync::{Collection, Database};
use mongodb::IndexModel;

use super::model::User;

/// Enough for every listing the admin page needs; keeps one request bounded.
pub const MAX_LISTED_USERS: i64 = 10_000;

#[derive(Debug)]
pub enum StoreError {
    /// A unique index refused the write (code 11000).
    Duplicate,
    /// The database could not be reached (or refused us).
    Unavailable(String),
    /// Anything else the driver reported.
    Other(String),
}

/// Last known reachability of the database, shared by every thread.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const UNKNOWN: u8 = 0;
const OK: u8 = 1;
const DOWN: u8 = 2;

impl Health {
    pub fn is_ok(&self) -> bool {
        self.0.load(Ordering::Acquire) == OK
    }

    pub fn as_str(&self) -> &'static str {
        if self.is_ok() {
            "ok"
        } else {
            "unavailable"
        }
    }

    pub fn set_ok(&self) {
        if self.0.swap(OK, Ordering::AcqRel) != OK {
            log::info!("accounts database is reachable");
        }
    }

    pub fn set_down(&self, why: &str) {
        let before = self.0.swap(DOWN, Ordering::AcqRel);
        if before == OK || before == UNKNOWN {
            log::warn!("accounts database is unavailable: {why}");
        }
    }
}

/// The accounts collections, and the reachability every call through it
/// records (shared with `/health`, which asks without a query).
pub struct Store {
    health: Arc<Health>,
    db: Database,
    users: Collection<User>,
    /// Small bookkeeping documents; today only the first-user claim.
    meta: Collection<Document>,
}

/// `_id` of the document in `meta` whose insertion is the right to create
/// the first user.
const FIRST_USER_CLAIM: &str = "first_user";

/// A claim this old with still no user was left by a crash between claim
/// and insert; it may be taken over.
const STALE_CLAIM: Duration = Duration::from_secs(60);

fn classify(e: mongodb::error::Error) -> StoreError {
    // Codes the server sends while stepping down or shutting down: a
    // reachability problem, not a bad request.
    const NOT_AVAILABLE_CODES: &[i32] = &[
        6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
    ];
    if e.contains_label("NetworkError") || e.contains_label("RetryableWriteError") {
        return StoreError::Unavailable(short(&e));
    }
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000 => StoreError::Duplicate,
        ErrorKind::Command(c) if c.code == 11000 => StoreError::Duplicate,
        ErrorKind::Command(c) if NOT_AVAILABLE_CODES.contains(&c.code) => {
            StoreError::Unavailable(short(&e))
        }
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => StoreError::Unavailable(short(&e)),
        _ => StoreError::Other(short(&e)),
    }
}

impl Store {
    /// Builds the client. For `mongodb://` this does no I/O; for
    /// `mongodb+srv://` it resolves DNS, which is why only the maintenance
    /// thread calls it.
    pub fn connect(uri: &str, db_name: &str, health: Arc<Health>) -> Result<Store, StoreError> {
        let client = crate::mongo::client(uri).map_err(classify)?;
        let db = client.database(db_name);
        let users = db.collection::<User>("users");
        let meta = db.collection::<Document>("meta");
        Ok(Store {
            health,
            db,
            users,
            meta,
        })
    }

    fn track<T>(&self, r: mongodb::error::Result<T>) -> Result<T, StoreError> {
        let health = &self.health;
        match r {
            Ok(v) => {
                health.set_ok();
                Ok(v)
            }
            Err(e) => {
                let e = classify(e);
                match &e {
                    StoreError::Unavailable(why) => health.set_down(why),
                    // The server answered, so it is reachable.
                    StoreError::Duplicate | StoreError::Other(_) => health.set_ok(),
                }
                Err(e)
            }
        }
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        let r = self.db.run_command(doc! { "ping": 1 }).run();
        self.track(r).map(|_| ())
    }

    /// Unique index on the normalised email, plain index on the setup token.
    /// Creating an index that already exists with the same definition is a
    /// no-op, so this runs at every start.
    pub fn ensure_indexes(&self) -> Result<(), StoreError> {
        let email = IndexModel::builder()
            .keys(doc! { "email": 1 })
            .options(
                IndexOptions::builder()
                    .name("email_unique".to_string())
                    .unique(true)
                    .build(),
            )
            .build();
        let setup = IndexModel::builder()
            .keys(doc! { "setup_token": 1 })
            .options(
                IndexOptions::builder()
                    .name("setup_token".to_string())
                    .build(),
            )
            .build();
        let r = self.users.create_indexes([email, setup]).run();
        self.track(r).map(|_| ())
    }

    pub fn any_users(&self) -> Result<bool, StoreError> {
        let r = self.users.count_documents(doc! {}).limit(1).run();
        self.track(r).map(|n| n > 0)
    }

    /// Claims the right to create the first user; `false` when someone else
    /// holds it. Checking "no users yet" and inserting are two calls, and
    /// two first-user requests (or one and the `INITIAL_ADMIN_*` bootstrap)
    /// could both pass the check; only one can insert the claim, because
    /// `_id` is unique. The claim is never released after a user was
    /// created: a slow rival that saw "no users" must still lose.
    pub fn claim_first_user(&self) -> Result<bool, StoreError> {
        let now = mongodb::bson::DateTime::now();
        let claim = doc! { "_id": FIRST_USER_CLAIM, "at": now };
        match self.track(self.meta.insert_one(claim.clone()).run()) {
            Ok(_) => return Ok(true),
            Err(StoreError::Duplicate) => {}
            Err(e) => return Err(e),
        }
        let cutoff = mongodb::bson::DateTime::from_millis(
            now.timestamp_millis() - STALE_CLAIM.as_millis() as i64,
        );
        let r = self
            .meta
            .delete_one(doc! { "_id": FIRST_USER_CLAIM, "at": { "$lt": cutoff } })
            .run();
        if self.track(r)?.deleted_count == 0 {
            return Ok(false);
        }
        match self.track(self.meta.insert_one(claim).run()) {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives a claim back after the first user could not be created, so
    /// that a retry does not wait for it to go stale.
    pub fn release_first_user(&self) -> Result<(), StoreError> {
        let r = self.meta.delete_one(doc! { "_id": FIRST_USER_CLAIM }).run();
        self.track(r).map(|_| ())
    }

    /// Whether any user has an active account.
    pub fn any_active_users(&self) -> Result<bool, StoreError> {
        let r = self
            .users
            .count_documents(doc! { "is_active": true })
            .limit(1)
            .run();
        self.track(r).map(|n| n > 0)
    }

    /// One user that has not activated, if any.
    pub fn find_pending(&self) -> Result<Option<User>, StoreError> {
        let r = self.users.find_one(doc! { "is_active": false }).run();
        self.track(r)
    }

    /// Replaces the stored user with `user`'s `_id`, if it is still
    /// inactive; `false` when it is not (activated or gone meanwhile).
    pub fn replace_pending(&self, user: &User) -> Result<bool, StoreError> {
        let r = self
            .users
            .replace_one(doc! { "_id": user.id, "is_active": false }, user)
            .run();
        self.track(r).map(|r| r.matched_count > 0)
    }

    pub fn insert(&self, user: &User) -> Result<(), StoreError> {
        let r = self.users.insert_one(user).run();
        self.track(r).map(|_| ())
    }

    pub fn find_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let r = self.users.find_one(doc! { "email": email }).run();
        self.track(r)
    }

    pub fn find_by_id(&self, id: ObjectId) -> Result<Option<User>, StoreError> {
        let r = self.users.find_one(doc! { "_id": id }).run();
        self.track(r)
    }

    pub fn find_by_setup_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        let r = self.users.find_one(doc! { "setup_token": token }).run();
        self.track(r)
    }

    pub fn list(&self) -> Result<Vec<User>, StoreError> {
        let cursor = self
            .users
            .find(doc! {})
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(MAX_LISTED_USERS)
            .run();
        let cursor = self.track(cursor)?;
        let mut out = Vec::new();
        for u in cursor {
            out.push(self.track(u)?);
        }
        Ok(out)
    }

    /// `update_one`; `Ok(false)` when nothing matched `filter`.
    pub fn update(&self, filter: Document, update: Document) -> Result<bool, StoreError> {
        let r = self.users.update_one(filter, update).run();
        self.track(r).map(|r| r.matched_count > 0)
    }

    /// Atomic update returning the new document; `None` when nothing matched.
    pub fn find_and_update(
        &self,
        filter: Document,
        update: Document,
    ) -> Result<Option<User>, StoreError> {
        let r = self
            .users
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .run();
        self.track(r)
    }

    pub fn delete(&self, id: ObjectId) -> Result<bool, StoreError> {
        let r = self.users.delete_one(doc! { "_id": id }).run();
        self.track(r).map(|r| r.deleted_count > 0)
    }

    /// Active admins other than `except`.
    pub fn count_other_active_admins(&self, except: ObjectId) -> Result<u64, StoreError> {
        let r = self
            .users
            .count_documents(doc! { "role": "admin", "is_active": true, "_id": { "$ne": except } })
            .run();
        self.track(r)
    }
}
