//! The `/api/auth/*` routes and the `REQUIRE_AUTH` token check.
//!
//! [`Service`] owns the shared state of the accounts layer (store, keys,
//! limiters, configuration) and turns one [`Job`] into one [`Reply`]; it runs
//! only on worker threads and the maintenance thread. Rules kept here:
//! - Authentication runs before validation: 401/403 come before 400.
//! - Every authenticated call re-reads the user: a deleted or deactivated
//!   user, or a token whose `ver` is not the user's current `token_version`
//!   (logout, password change, deactivation, role change), gets 401. The role
//!   that counts is the stored one, not the token's.
//! - Unknown email, invited-but-unset account and wrong password all cost one
//!   argon2 verification and all answer 401 "Invalid email or password".
//! - There is always at least one active admin once one exists: deleting,
//!   demoting or deactivating the last one is refused (409). The check and the
//!   write happen under one lock, so two admins cannot remove each other at
//!   the same moment (within this process).
//! - With no users, `invite` needs `X-Setup-Token` equal to
//!   `INITIAL_SETUP_TOKEN` (constant-time compare), and the first user is an
//!   admin whatever role was asked for; with the variable unset, nobody can
//!   initialise the system over HTTP.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::AccountsConfig;
use super::model::{self, Profile, User, ROLE_ADMIN, ROLE_USER};
use super::password;
use super::ratelimit::{ip_key, Limiter};
use super::revoked::{self, Revocations};
use super::store::{Health, Store, StoreError};
use super::token::{Keys, TOKEN_LIFETIME_SECS};
use super::{AuthRequest, HttpReply, Job, Principal, Reply};
use crate::http::bearer;
use crate::util::constant_time_eq;

/// Buckets kept per limiter before pruning.
const MAX_LIMITER_KEYS: usize = 100_000;
/// Users whose revocations are remembered for outages (about 50 bytes each).
const MAX_REVOCATIONS: usize = 100_000;
/// Maintenance: how often to check the database when it answers / when not.
const CHECK_EVERY_OK: Duration = Duration::from_secs(5);
const CHECK_EVERY_DOWN: Duration = Duration::from_secs(1);

const MSG_UNAVAILABLE: &str = "The accounts database is unavailable; try again shortly";
const MSG_AUTH_REQUIRED: &str = "Authentication required";
const MSG_BAD_TOKEN: &str = "Invalid or expired token";
const MSG_BAD_LOGIN: &str = "Invalid email or password";
const MSG_ADMIN_ONLY: &str = "Admin access required";
const MSG_NO_USER: &str = "User not found";
const MSG_DUPLICATE: &str = "A user with this email already exists";
const MSG_BAD_SETUP_TOKEN: &str = "Invalid, expired or already used setup token";
const MSG_FIRST_USER_TAKEN: &str =
    "The first user has already been created; sign in as an admin to invite more";

/// An error answer: status and the sentence for `{"success":false,"error"}`.
#[derive(Debug)]
struct Fail {
    status: u16,
    msg: String,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
}

fn fail(status: u16, msg: impl Into<String>) -> Fail {
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

type Answer = Result<Value, Fail>;

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

pub struct Service {
    cfg: AccountsConfig,
    keys: Keys,
    health: Health,
    store: OnceLock<Store>,
    /// Indexes exist and the bootstrap admin has been handled.
    ready: AtomicBool,
    ip_limiter: Mutex<Limiter<IpAddr>>,
    /// Failed logins per client address and email together: a guesser is
    /// slowed on the account it tries, its owner elsewhere is not.
    email_limiter: Mutex<Limiter<(IpAddr, String)>>,
    /// Wrong setup tokens per client address, and for the whole server.
    setup_limiters: Mutex<(Limiter<IpAddr>, Limiter<()>)>,
    /// Serialises "is this the last admin?" checks with the write that
    /// follows them.
    admin_lock: Mutex<()>,
    /// Revocations seen here, for token checks during an outage.
    revoked: Mutex<Revocations<ObjectId>>,
}

enum Route {
    Invite,
    SetupInfo,
    SetupPassword,
    Login,
    Logout,
    Me,
    Users,
    User(String),
}

impl Service {
    pub fn new(cfg: AccountsConfig) -> Service {
        let l = cfg.login_limits;
        Service {
            keys: Keys::new(&cfg.jwt_secret),
            health: Health::default(),
            store: OnceLock::new(),
            ready: AtomicBool::new(false),
            ip_limiter: Mutex::new(Limiter::new(
                l.per_ip_burst,
                l.per_ip_refill,
                MAX_LIMITER_KEYS,
            )),
            email_limiter: Mutex::new(Limiter::new(
                l.per_email_burst,
                l.per_email_refill,
                MAX_LIMITER_KEYS,
            )),
            setup_limiters: Mutex::new((
                Limiter::new(
                    cfg.setup_limits.per_ip_burst,
                    cfg.setup_limits.per_ip_refill,
                    MAX_LIMITER_KEYS,
                ),
                Limiter::new(
                    cfg.setup_limits.total_burst,
                    cfg.setup_limits.total_refill,
                    16,
                ),
            )),
            admin_lock: Mutex::new(()),
            revoked: Mutex::new(Revocations::new(
                MAX_REVOCATIONS,
                Duration::from_secs(TOKEN_LIFETIME_SECS),
            )),
            cfg,
        }
    }

    pub fn store_status(&self) -> &'static str {
        self.health.as_str()
    }

    /// A job got no answer in time: the database took a query and went
    /// silent, which the driver notices only at its next heartbeat. The
    /// next call that gets an answer marks it reachable again.
    pub fn note_no_answer(&self) {
        self.health.set_down("no answer in time");
    }

    pub fn handle(&self, job: Job) -> Reply {
        match job {
            Job::Http(req) => Reply::Http(self.http(&req)),
            Job::Authorize { token } => Reply::Authorized(self.authorize(&token)),
            Job::AuthorizeAdmin { token } => Reply::Authorized(self.authorize_admin(&token)),
        }
    }

    // ----- maintenance thread -------------------------------------------

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

    fn maintenance_round(&self) {
        let store = match self.store.get() {
            Some(s) => s,
            None => match Store::connect(&self.cfg.mongodb_uri, &self.cfg.db_name) {
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
        if store.ping(&self.health).is_err() {
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
    fn prepare(&self, store: &Store) -> Result<(), StoreError> {
        store.ensure_indexes(&self.health)?;
        let Some(admin) = &self.cfg.initial_admin else {
            return Ok(());
        };
        if store.any_users(&self.health)? {
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
        if !store.claim_first_user(&self.health)? || store.any_users(&self.health)? {
            return Ok(());
        }
        match store.insert(&self.health, &user) {
            Ok(()) => {
                log::info!("accounts: created the initial admin (id {})", user.id_hex());
                Ok(())
            }
            Err(e) => {
                let _ = store.release_first_user(&self.health);
                Err(e)
            }
        }
    }

    // ----- workers --------------------------------------------------------

    fn store(&self) -> Result<&Store, Fail> {
        match self.store.get() {
            Some(s) if self.ready.load(Ordering::Acquire) => Ok(s),
            _ => Err(fail(503, MSG_UNAVAILABLE)),
        }
    }

    /// `REQUIRE_AUTH`: a valid signature and expiry, then (when the database
    /// answers) a live, active user whose `token_version` matches. While the
    /// database is unreachable the signature alone decides: rooms must keep
    /// working during an outage, and a revoked-but-unexpired token getting
    /// into a room for that time is the lesser harm.
    fn authorize(&self, token: &str) -> Option<Principal> {
        let claims = self.keys.verify(token)?;
        let id = ObjectId::parse_str(&claims.sub).ok()?;
        // With the database unreachable a signed, unexpired token admits
        // (rooms keep working through an outage), unless this server has
        // seen it revoked; its role is then the token's own.
        let remembered = || {
            self.revocations()
                .allows(&id, claims.ver)
                .then(|| Principal {
                    user: id.to_hex(),
                    admin: claims.role == model::ROLE_ADMIN,
                })
        };
        let store = match self.store.get() {
            Some(s) if self.ready.load(Ordering::Acquire) && self.health.is_ok() => s,
            _ => return remembered(),
        };
        match store.find_by_id(&self.health, id) {
            Ok(Some(u)) => {
                self.seen(&u);
                (u.is_active && u.token_version == claims.ver).then(|| Principal {
                    user: u.id_hex(),
                    admin: u.is_admin(),
                })
            }
            Ok(None) => None,
            Err(StoreError::Unavailable(_)) => remembered(),
            Err(_) => None,
        }
    }

    /// The admin inspector: a valid token of an active admin, checked
    /// against the stored user (role and token version) like every admin
    /// route. Unlike [`Self::authorize`] an outage refuses: the inspector
    /// can wait, and a signature alone says nothing about the current role.
    /// The admin a token speaks for (`None`: not a valid admin token).
    fn authorize_admin(&self, token: &str) -> Option<Principal> {
        let claims = self.keys.verify(token)?;
        let id = ObjectId::parse_str(&claims.sub).ok()?;
        let store = self.store().ok()?;
        match store.find_by_id(&self.health, id) {
            Ok(Some(u)) => {
                self.seen(&u);
                (u.is_active && u.token_version == claims.ver && u.is_admin()).then(|| Principal {
                    user: claims.sub.clone(),
                    admin: true,
                })
            }
            _ => None,
        }
    }

    fn revocations(&self) -> std::sync::MutexGuard<'_, Revocations<ObjectId>> {
        self.revoked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that tokens of `u` older than its current version are void.
    fn seen(&self, u: &User) {
        self.revoke_below(u.id, u.token_version);
    }

    fn revoke_below(&self, id: ObjectId, version: i64) {
        self.revocations().note(&id, version, Instant::now());
    }

    fn http(&self, req: &AuthRequest) -> HttpReply {
        match self.route(req) {
            Ok(v) => crate::http::Answer::json(200, v).into(),
            Err(f) => f.into(),
        }
    }

    fn route(&self, req: &AuthRequest) -> Answer {
        let Some(rest) = req.path.strip_prefix("/api/auth/") else {
            return Err(fail(404, "Not found"));
        };
        let (route, allow): (Route, &'static str) = match rest {
            "invite" => (Route::Invite, "POST"),
            "setup-info" => (Route::SetupInfo, "GET"),
            "setup-password" => (Route::SetupPassword, "POST"),
            "login" => (Route::Login, "POST"),
            "logout" => (Route::Logout, "POST"),
            "me" => (Route::Me, "GET, PUT"),
            "users" => (Route::Users, "GET"),
            r => match r.strip_prefix("users/") {
                Some(id) if !id.is_empty() && !id.contains('/') => {
                    (Route::User(id.to_string()), "PUT, DELETE")
                }
                _ => return Err(fail(404, "Not found")),
            },
        };
        let m = req.method.as_str();
        if !allow.split(", ").any(|a| a == m) {
            return Err(Fail {
                allow: Some(allow),
                ..fail(405, format!("Method {m} is not allowed here; use {allow}"))
            });
        }
        let store = self.store()?;
        match (route, m) {
            (Route::Invite, _) => self.invite(store, req),
            (Route::SetupInfo, _) => self.setup_info(store, req),
            (Route::SetupPassword, _) => self.setup_password(store, req),
            (Route::Login, _) => self.login(store, req),
            (Route::Logout, _) => self.logout(store, req),
            (Route::Me, "GET") => self.authenticate(store, req).map(|u| u.me_json()),
            (Route::Me, _) => self.update_me(store, req),
            (Route::Users, _) => self.list_users(store, req),
            (Route::User(id), "PUT") => self.update_user(store, req, &id),
            (Route::User(id), _) => self.delete_user(store, req, &id),
        }
    }

    fn authenticate(&self, store: &Store, req: &AuthRequest) -> Result<User, Fail> {
        let token =
            bearer(req.authorization.as_deref()).ok_or_else(|| fail(401, MSG_AUTH_REQUIRED))?;
        let claims = self
            .keys
            .verify(token)
            .ok_or_else(|| fail(401, MSG_BAD_TOKEN))?;
        let id = ObjectId::parse_str(&claims.sub).map_err(|_| fail(401, MSG_BAD_TOKEN))?;
        match store.find_by_id(&self.health, id)? {
            Some(u) => {
                self.seen(&u);
                if u.is_active && u.token_version == claims.ver {
                    Ok(u)
                } else {
                    Err(fail(401, MSG_BAD_TOKEN))
                }
            }
            None => Err(fail(401, MSG_BAD_TOKEN)),
        }
    }

    fn require_admin(&self, store: &Store, req: &AuthRequest) -> Result<User, Fail> {
        let u = self.authenticate(store, req)?;
        if u.is_admin() {
            Ok(u)
        } else {
            Err(fail(403, MSG_ADMIN_ONLY))
        }
    }

    fn invite(&self, store: &Store, req: &AuthRequest) -> Answer {
        let first_user = !store.any_users(&self.health)?;
        // While the first user has not activated (invited without a
        // password, its link lost or expired), nobody can log in to invite
        // anyone: the setup token may invite the first user again, and the
        // new invitation replaces the pending one.
        let mut replaces = None;
        if first_user {
            self.check_setup_token(req)?;
        } else if req.setup_token.is_some() && !store.any_active_users(&self.health)? {
            self.check_setup_token(req)?;
            let pending = store.find_pending(&self.health)?;
            replaces = Some(pending.ok_or_else(|| fail(409, MSG_FIRST_USER_TAKEN))?);
        } else if req.setup_token.is_some() && req.authorization.is_none() {
            // A first-user request that lost (a rival's invite, concurrent
            // or earlier, created the first user): 409, as the README
            // promises, once its token is right.
            self.check_setup_token(req)?;
            return Err(fail(409, MSG_FIRST_USER_TAKEN));
        } else {
            self.require_admin(store, req)?;
        }
        let first_user = first_user || replaces.is_some();
        let body: InviteBody = parse_body(&req.body)?;
        let email = model::normalize_email(&body.email).map_err(|e| fail(400, e))?;
        let role = match body.role.as_deref() {
            // The first user must be able to administer the system.
            _ if first_user => ROLE_ADMIN.to_string(),
            None => ROLE_USER.to_string(),
            Some(r) => model::validate_role(r).map_err(|e| fail(400, e))?,
        };
        let profile = Profile {
            first_name: opt_field(body.first_name.as_deref())?,
            last_name: opt_field(body.last_name.as_deref())?,
            nickname: opt_field(body.nickname.as_deref())?,
            position: opt_field(body.position.as_deref())?,
        };
        let discord_id = opt_field(body.discord_id.as_deref())?;
        // An empty password means "send a setup link", as it did before.
        let password = body.password.filter(|p| !p.is_empty());
        if let Some(p) = &password {
            model::validate_password(p).map_err(|e| fail(400, e))?;
        }
        // Cheap early answer before spending a hash; the unique index is
        // still what guarantees it.
        if let Some(other) = store.find_by_email(&self.health, &email)? {
            if replaces.as_ref().map(|p| p.id) != Some(other.id) {
                return Err(fail(409, MSG_DUPLICATE));
            }
        }
        let (hash, setup_token) = match &password {
            Some(p) => (Some(password::hash(p).map_err(internal)?), None),
            None => (None, Some(random_hex(32).map_err(internal)?)),
        };
        let mut user = new_user(email, role, hash, setup_token.clone(), discord_id, profile);
        if let Some(pending) = &replaces {
            user.id = pending.id;
            user.user_id = pending.user_id.clone();
            user.created_at = pending.created_at;
            // Tokens are never issued to an inactive user, but a bump keeps
            // "a new version revokes the old" true of every rewrite.
            user.token_version = pending.token_version + 1;
            if !store.replace_pending(&self.health, &user)? {
                return Err(fail(409, MSG_FIRST_USER_TAKEN));
            }
        } else if first_user {
            self.insert_first_user(store, &user)?;
        } else {
            store.insert(&self.health, &user)?;
        }
        log::info!(
            "accounts: user {} invited ({})",
            user.id_hex(),
            if first_user {
                "first user"
            } else {
                "by an admin"
            }
        );
        Ok(match setup_token {
            None => json!({
                "success": true,
                "message": "User account created and activated",
                "activated": true,
                "id": user.id_hex(),
            }),
            Some(t) => json!({
                "success": true,
                "message": "Invitation created; share the setup link with the user",
                "setup_link": model::setup_link(&t),
                "id": user.id_hex(),
            }),
        })
    }

    /// Inserts the first user unless a rival got there first (see
    /// [`Store::claim_first_user`]); the loser hears 409, as a second
    /// invite for one email would.
    fn insert_first_user(&self, store: &Store, user: &User) -> Result<(), Fail> {
        if !store.claim_first_user(&self.health)? || store.any_users(&self.health)? {
            return Err(fail(409, MSG_FIRST_USER_TAKEN));
        }
        if let Err(e) = store.insert(&self.health, user) {
            let _ = store.release_first_user(&self.health);
            return Err(e.into());
        }
        Ok(())
    }

    fn check_setup_token(&self, req: &AuthRequest) -> Result<(), Fail> {
        let Some(expected) = &self.cfg.setup_token else {
            return Err(fail(
                403,
                "The system has no users and INITIAL_SETUP_TOKEN is not set, so it cannot be initialised over HTTP",
            ));
        };
        let Some(given) = req.setup_token.as_deref().filter(|t| !t.is_empty()) else {
            // 403, not 401: no credential the client could add would be a
            // login; the tracker's own backend answers this way (§3).
            return Err(fail(
                403,
                "Creating the first user requires the X-Setup-Token header",
            ));
        };
        // The budget is checked before the token is compared, so a guesser
        // over it learns nothing; only wrong tokens spend from it.
        let now = Instant::now();
        let ip = ip_key(req.client_ip);
        let mut limits = self
            .setup_limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *limits;
        let wait = match (per_ip.check(&ip, now), total.check(&(), now)) {
            (Ok(()), Ok(())) => None,
            (Err(a), Err(b)) => Some(a.max(b)),
            (Err(a), _) | (_, Err(a)) => Some(a),
        };
        if let Some(secs) = wait {
            return Err(Fail {
                retry_after: Some(secs),
                ..fail(
                    429,
                    format!("Too many wrong setup tokens; try again in {secs} seconds"),
                )
            });
        }
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            per_ip.spend(&ip, now);
            total.spend(&(), now);
            log::warn!("accounts: wrong setup token from {ip}");
            return Err(fail(403, "Invalid setup token"));
        }
        Ok(())
    }

    fn setup_info(&self, store: &Store, req: &AuthRequest) -> Answer {
        let token = query_param(req.query.as_deref(), "token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(400, "The token query parameter is required"))?;
        match store.find_by_setup_token(&self.health, &token)? {
            Some(u) if u.setup_token_live(DateTime::now()) => {
                Ok(json!({"success": true, "email": u.email}))
            }
            _ => Err(fail(404, MSG_BAD_SETUP_TOKEN)),
        }
    }

    fn setup_password(&self, store: &Store, req: &AuthRequest) -> Answer {
        let body: SetupPasswordBody = parse_body(&req.body)?;
        if body.token.is_empty() {
            return Err(fail(400, "The token field is required"));
        }
        model::validate_password(&body.password).map_err(|e| fail(400, e))?;
        // Look first, so a bad token costs no hash.
        let Some(user) = store
            .find_by_setup_token(&self.health, &body.token)?
            .filter(|u| u.setup_token_live(DateTime::now()))
        else {
            return Err(fail(404, MSG_BAD_SETUP_TOKEN));
        };
        let hash = password::hash(&body.password).map_err(internal)?;
        // The token in the filter makes it single-use even against a
        // concurrent request with the same token.
        let updated = store.find_and_update(
            &self.health,
            doc! { "_id": user.id, "setup_token": &body.token },
            doc! {
                "$set": { "password_hash": hash, "is_active": true, "updated_at": DateTime::now() },
                "$unset": { "setup_token": "", "setup_token_expires_at": "" },
                "$inc": { "token_version": 1_i64 },
            },
        )?;
        match updated {
            Some(u) => {
                log::info!("accounts: user {} set a password", u.id_hex());
                Ok(json!({"success": true, "email": u.email}))
            }
            None => Err(fail(404, MSG_BAD_SETUP_TOKEN)),
        }
    }

    fn login(&self, store: &Store, req: &AuthRequest) -> Answer {
        let body: LoginBody = parse_body(&req.body)?;
        if body.email.trim().is_empty() || body.password.is_empty() {
            return Err(fail(400, "Email and password are required"));
        }
        // Invalid addresses are limited under their raw form and then fail
        // like unknown ones.
        let email = model::normalize_email(&body.email).ok();
        let email_key = email
            .clone()
            .unwrap_or_else(|| body.email.trim().to_lowercase());
        self.rate_limit(req.client_ip, &email_key)?;

        let user = match &email {
            Some(e) => store.find_by_email(&self.health, e)?,
            None => None,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
        if body.password.len() > model::MAX_PASSWORD_BYTES
            || !password::verify(&body.password, hash)
        {
            return Err(fail(401, MSG_BAD_LOGIN));
        }
        let user = user.ok_or_else(|| fail(401, MSG_BAD_LOGIN))?;
        if !user.is_active {
            return Err(fail(403, "This account has been deactivated"));
        }
        let token = self
            .keys
            .issue(&user.id_hex(), &user.role, user.token_version)
            .map_err(internal)?;
        self.refund_login(req.client_ip, &email_key);
        Ok(json!({
            "success": true,
            "id": user.id_hex(),
            "user_id": user.user_id,
            "email": user.email,
            "role": user.role,
            "token": token,
            "profile": user.profile_json(),
        }))
    }

    fn rate_limit(&self, ip: IpAddr, email: &str) -> Result<(), Fail> {
        let now = Instant::now();
        let too_many = |secs: u64| Fail {
            retry_after: Some(secs),
            ..fail(
                429,
                format!("Too many login attempts; try again in {secs} seconds"),
            )
        };
        let mut ips = self.ip_limiter.lock().unwrap_or_else(|e| e.into_inner());
        let mut emails = self.email_limiter.lock().unwrap_or_else(|e| e.into_inner());
        let ip = ip_key(ip);
        let email = (ip, email.to_string());
        // Check both before spending either, so a refused attempt costs
        // nothing and "retry after" is honest.
        match (ips.check(&ip, now), emails.check(&email, now)) {
            (Ok(()), Ok(())) => {
                ips.spend(&ip, now);
                emails.spend(&email, now);
                Ok(())
            }
            (Err(a), Err(b)) => Err(too_many(a.max(b))),
            (Err(a), _) | (_, Err(a)) => Err(too_many(a)),
        }
    }

    /// A successful login does not count against its address or email.
    fn refund_login(&self, ip: IpAddr, email: &str) {
        let now = Instant::now();
        let mut ips = self.ip_limiter.lock().unwrap_or_else(|e| e.into_inner());
        let mut emails = self.email_limiter.lock().unwrap_or_else(|e| e.into_inner());
        ips.refund(&ip_key(ip), now);
        emails.refund(&(ip_key(ip), email.to_string()), now);
    }

    fn logout(&self, store: &Store, req: &AuthRequest) -> Answer {
        let user = self.authenticate(store, req)?;
        // Conditional on the version we saw: a concurrent revocation has
        // already done the job.
        store.update(
            &self.health,
            doc! { "_id": user.id, "token_version": user.token_version },
            doc! { "$inc": { "token_version": 1_i64 }, "$set": { "updated_at": DateTime::now() } },
        )?;
        self.revoke_below(user.id, user.token_version + 1);
        Ok(json!({"success": true}))
    }

    fn update_me(&self, store: &Store, req: &AuthRequest) -> Answer {
        let user = self.authenticate(store, req)?;
        let body: UpdateMeBody = parse_body(&req.body)?;
        let mut set = profile_updates(&body.profile)?;
        let mut update = Document::new();
        let new_password = body.password.filter(|p| !p.is_empty());
        if let Some(p) = &new_password {
            model::validate_password(p).map_err(|e| fail(400, e))?;
            set.insert("password_hash", password::hash(p).map_err(internal)?);
            // A new password ends every other session.
            update.insert("$inc", doc! { "token_version": 1_i64 });
        }
        set.insert("updated_at", DateTime::now());
        update.insert("$set", set);
        let updated = store.find_and_update(&self.health, doc! { "_id": user.id }, update)?;
        let Some(updated) = updated else {
            return Err(fail(401, MSG_BAD_TOKEN));
        };
        self.seen(&updated);
        let mut out = json!({"success": true});
        if new_password.is_some() {
            // The caller's own token was revoked with the others; hand it a
            // fresh one so the browser stays signed in.
            let token = self
                .keys
                .issue(&updated.id_hex(), &updated.role, updated.token_version)
                .map_err(internal)?;
            out["token"] = Value::String(token);
        }
        Ok(out)
    }

    fn list_users(&self, store: &Store, req: &AuthRequest) -> Answer {
        self.require_admin(store, req)?;
        let users: Vec<Value> = store
            .list(&self.health)?
            .iter()
            .map(User::admin_list_json)
            .collect();
        Ok(json!({"success": true, "users": users}))
    }

    fn update_user(&self, store: &Store, req: &AuthRequest, id: &str) -> Answer {
        self.require_admin(store, req)?;
        let body: UpdateUserBody = parse_body(&req.body)?;
        let mut set = profile_updates(&body.profile)?;
        if let Some(e) = &body.email {
            set.insert(
                "email",
                model::normalize_email(e).map_err(|e| fail(400, e))?,
            );
        }
        let role = match &body.role {
            Some(r) => Some(model::validate_role(r).map_err(|e| fail(400, e))?),
            None => None,
        };
        let id = ObjectId::parse_str(id).map_err(|_| fail(404, MSG_NO_USER))?;

        let _guard = self.admin_lock.lock().unwrap_or_else(|e| e.into_inner());
        let target = store
            .find_by_id(&self.health, id)?
            .ok_or_else(|| fail(404, MSG_NO_USER))?;
        let stays_admin = role
            .as_deref()
            .map_or(target.is_admin(), |r| r == ROLE_ADMIN);
        let stays_active = body.is_active.unwrap_or(target.is_active);
        if target.is_admin()
            && target.is_active
            && !(stays_admin && stays_active)
            && store.count_other_active_admins(&self.health, id)? == 0
        {
            return Err(fail(409, "The last admin cannot be demoted or deactivated"));
        }
        let mut update = Document::new();
        let revoke = (role.is_some() && role.as_deref() != Some(target.role.as_str()))
            || (body.is_active == Some(false) && target.is_active);
        if let Some(r) = role {
            set.insert("role", r);
        }
        if let Some(a) = body.is_active {
            set.insert("is_active", a);
        }
        set.insert("updated_at", DateTime::now());
        update.insert("$set", set);
        if revoke {
            update.insert("$inc", doc! { "token_version": 1_i64 });
        }
        if !store.update(&self.health, doc! { "_id": id }, update)? {
            return Err(fail(404, MSG_NO_USER));
        }
        if revoke {
            self.revoke_below(id, target.token_version + 1);
        }
        Ok(json!({"success": true}))
    }

    fn delete_user(&self, store: &Store, req: &AuthRequest, id: &str) -> Answer {
        self.require_admin(store, req)?;
        let id = ObjectId::parse_str(id).map_err(|_| fail(404, MSG_NO_USER))?;
        let _guard = self.admin_lock.lock().unwrap_or_else(|e| e.into_inner());
        let target = store
            .find_by_id(&self.health, id)?
            .ok_or_else(|| fail(404, MSG_NO_USER))?;
        if target.is_admin()
            && target.is_active
            && store.count_other_active_admins(&self.health, id)? == 0
        {
            return Err(fail(409, "The last admin cannot be deleted"));
        }
        if !store.delete(&self.health, id)? {
            return Err(fail(404, MSG_NO_USER));
        }
        self.revoke_below(id, revoked::ALL);
        log::info!("accounts: user {} deleted", id.to_hex());
        Ok(json!({"success": true}))
    }
}

fn internal(why: String) -> Fail {
    log::error!("accounts: {why}");
    fail(500, "Internal error")
}

fn new_user(
    email: String,
    role: String,
    password_hash: Option<String>,
    setup_token: Option<String>,
    discord_id: Option<String>,
    profile: Profile,
) -> User {
    let now = DateTime::now();
    let setup_token_expires_at = setup_token
        .as_ref()
        .map(|_| DateTime::from_millis(now.timestamp_millis() + model::SETUP_TOKEN_LIFETIME_MS));
    User {
        id: ObjectId::new(),
        user_id: uuid_v4(),
        email,
        role,
        is_active: password_hash.is_some(),
        password_hash,
        setup_token,
        setup_token_expires_at,
        token_version: 0,
        discord_id,
        profile,
        created_at: now,
        updated_at: Some(now),
    }
}

// ----- request bodies ------------------------------------------------------

#[derive(Deserialize)]
struct InviteBody {
    email: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    position: Option<String>,
    #[serde(default)]
    discord_id: Option<String>,
}

#[derive(Deserialize)]
struct SetupPasswordBody {
    token: String,
    password: String,
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

/// Profile fields that PUT routes may change; absent or null = unchanged,
/// empty string = cleared.
#[derive(Deserialize, Default)]
struct ProfilePatch {
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    position: Option<String>,
    #[serde(default)]
    discord_id: Option<String>,
}

#[derive(Deserialize)]
struct UpdateMeBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(flatten)]
    profile: ProfilePatch,
}

#[derive(Deserialize)]
struct UpdateUserBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    is_active: Option<bool>,
    #[serde(flatten)]
    profile: ProfilePatch,
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Fail> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(400, "A JSON request body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = crate::protocol::detail(e);
        fail(400, format!("Invalid request body: {msg}"))
    })
}

fn opt_field(v: Option<&str>) -> Result<Option<String>, Fail> {
    match v {
        None => Ok(None),
        Some(v) => model::clean_profile_field(v).map_err(|e| fail(400, e)),
    }
}

/// `$set` entries for the profile fields present in a PUT body.
fn profile_updates(p: &ProfilePatch) -> Result<Document, Fail> {
    let mut set = Document::new();
    for (key, value) in [
        ("profile.first_name", &p.first_name),
        ("profile.last_name", &p.last_name),
        ("profile.nickname", &p.nickname),
        ("profile.position", &p.position),
        ("discord_id", &p.discord_id),
    ] {
        if let Some(v) = value {
            match model::clean_profile_field(v).map_err(|e| fail(400, e))? {
                Some(v) => set.insert(key, v),
                None => set.insert(key, mongodb::bson::Bson::Null),
            };
        }
    }
    Ok(set)
}

// ----- small helpers ---------------------------------------------------------

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random (version 4) UUID, the browser client's `user_id`.
fn uuid_v4() -> String {
    // Without OS randomness the ObjectId still identifies the user; the UUID
    // then merely loses its randomness, so do not fail the request over it.
    crate::util::uuid_v4(&mut |b| {
        let _ = getrandom::fill(b);
    })
}

use crate::http::query_param;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // Length difference that is a multiple of 256 must still differ.
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_param(Some("token=abc"), "token").as_deref(),
            Some("abc")
        );
        assert_eq!(
            query_param(Some("x=1&token=a%2Bb+c"), "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param(Some("tokens=1"), "token"), None);
        assert_eq!(query_param(Some("token"), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("token=%zz"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn body_errors_are_400() {
        let e = parse_body::<LoginBody>(b"").err().unwrap();
        assert_eq!(e.status, 400);
        let e = parse_body::<LoginBody>(b"{").err().unwrap();
        assert_eq!(e.status, 400);
        let e = parse_body::<LoginBody>(br#"{"email":1,"password":"x"}"#)
            .err()
            .unwrap();
        assert_eq!(e.status, 400);
        assert!(!e.msg.contains("line"), "{}", e.msg);
        let b = parse_body::<UpdateUserBody>(br#"{"is_active":false,"nickname":"N","unknown":1}"#)
            .unwrap();
        assert_eq!(b.is_active, Some(false));
        assert_eq!(b.profile.nickname.as_deref(), Some("N"));
    }

    #[test]
    fn profile_patch() {
        let p = ProfilePatch {
            first_name: Some(" A ".into()),
            last_name: Some("".into()),
            ..Default::default()
        };
        let d = profile_updates(&p).unwrap();
        assert_eq!(d.get_str("profile.first_name").unwrap(), "A");
        assert!(matches!(
            d.get("profile.last_name"),
            Some(mongodb::bson::Bson::Null)
        ));
        assert!(d.get("profile.nickname").is_none());
    }
}
