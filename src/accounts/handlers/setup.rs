//! Invitations and the setup link: `invite` (with the first-user and
//! setup-token rules), `setup-info` and `setup-password`.

use std::time::Instant;

use mongodb::bson::{doc, oid::ObjectId, DateTime};
use serde_json::json;

use super::answers::*;
use super::bodies::*;
use super::crypto::{random_hex, uuid_v4};
use super::Service;
use crate::accounts::model::{self, Profile, User, ROLE_ADMIN, ROLE_USER};
use crate::accounts::password;
use crate::accounts::ratelimit::ip_key;
use crate::accounts::store::Store;
use crate::accounts::AuthRequest;
use crate::http::query_param;
use crate::util::constant_time_eq;

impl Service {
    pub(super) fn invite(&self, store: &Store, req: &AuthRequest) -> Answer {
        let first_user = !store.any_users()?;
        // While the first user has not activated (invited without a
        // password, its link lost or expired), nobody can log in to invite
        // anyone: the setup token may invite the first user again, and the
        // new invitation replaces the pending one.
        let mut replaces = None;
        if first_user {
            self.check_setup_token(req)?;
        } else if req.setup_token.is_some() && !store.any_active_users()? {
            self.check_setup_token(req)?;
            let pending = store.find_pending()?;
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
            first_name: opt_field(body.profile.first_name.as_deref())?,
            last_name: opt_field(body.profile.last_name.as_deref())?,
            nickname: opt_field(body.profile.nickname.as_deref())?,
            position: opt_field(body.profile.position.as_deref())?,
        };
        let discord_id = opt_field(body.profile.discord_id.as_deref())?;
        // An empty password means "send a setup link", as it did before.
        let password = body.password.filter(|p| !p.is_empty());
        if let Some(p) = &password {
            model::validate_password(p).map_err(|e| fail(400, e))?;
        }
        // Cheap early answer before spending a hash; the unique index is
        // still what guarantees it.
        if let Some(other) = store.find_by_email(&email)? {
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
            if !store.replace_pending(&user)? {
                return Err(fail(409, MSG_FIRST_USER_TAKEN));
            }
        } else if first_user {
            self.insert_first_user(store, &user)?;
        } else {
            store.insert(&user)?;
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
    pub(super) fn insert_first_user(&self, store: &Store, user: &User) -> Result<(), Fail> {
        if !store.claim_first_user()? || store.any_users()? {
            return Err(fail(409, MSG_FIRST_USER_TAKEN));
        }
        if let Err(e) = store.insert(user) {
            let _ = store.release_first_user();
            return Err(e.into());
        }
        Ok(())
    }

    pub(super) fn check_setup_token(&self, req: &AuthRequest) -> Result<(), Fail> {
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

    pub(super) fn setup_info(&self, store: &Store, req: &AuthRequest) -> Answer {
        let token = query_param(req.query.as_deref(), "token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(400, "The token query parameter is required"))?;
        match store.find_by_setup_token(&token)? {
            Some(u) if u.setup_token_live(DateTime::now()) => {
                Ok(json!({"success": true, "email": u.email}))
            }
            _ => Err(fail(404, MSG_BAD_SETUP_TOKEN)),
        }
    }

    pub(super) fn setup_password(&self, store: &Store, req: &AuthRequest) -> Answer {
        let body: SetupPasswordBody = parse_body(&req.body)?;
        if body.token.is_empty() {
            return Err(fail(400, "The token field is required"));
        }
        model::validate_password(&body.password).map_err(|e| fail(400, e))?;
        // Look first, so a bad token costs no hash.
        let Some(user) = store
            .find_by_setup_token(&body.token)?
            .filter(|u| u.setup_token_live(DateTime::now()))
        else {
            return Err(fail(404, MSG_BAD_SETUP_TOKEN));
        };
        let hash = password::hash(&body.password).map_err(internal)?;
        // The token in the filter makes it single-use even against a
        // concurrent request with the same token.
        let updated = store.find_and_update(
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
}

pub(super) fn new_user(
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
