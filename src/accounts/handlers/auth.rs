//! Who a request or a token speaks for: the bearer token of an
//! `/api/auth/*` call, and the `REQUIRE_AUTH` and admin-inspector checks the
//! loop asks for.

use std::sync::atomic::Ordering;

use mongodb::bson::oid::ObjectId;

use super::answers::*;
use super::Service;
use crate::accounts::model::{self, User};
use crate::accounts::store::{Store, StoreError};
use crate::accounts::{AuthRequest, Principal};
use crate::http::bearer;

impl Service {
    /// `REQUIRE_AUTH`: a valid signature and expiry, then (when the database
    /// answers) a live, active user whose `token_version` matches. While the
    /// database is unreachable the signature alone decides: rooms must keep
    /// working during an outage, and a revoked-but-unexpired token getting
    /// into a room for that time is the lesser harm.
    pub(super) fn authorize(&self, token: &str) -> Option<Principal> {
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
        match store.find_by_id(id) {
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
    pub(super) fn authorize_admin(&self, token: &str) -> Option<Principal> {
        let claims = self.keys.verify(token)?;
        let id = ObjectId::parse_str(&claims.sub).ok()?;
        let store = self.store().ok()?;
        match store.find_by_id(id) {
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

    pub(super) fn authenticate(&self, store: &Store, req: &AuthRequest) -> Result<User, Fail> {
        let token =
            bearer(req.authorization.as_deref()).ok_or_else(|| fail(401, MSG_AUTH_REQUIRED))?;
        let claims = self
            .keys
            .verify(token)
            .ok_or_else(|| fail(401, MSG_BAD_TOKEN))?;
        let id = ObjectId::parse_str(&claims.sub).map_err(|_| fail(401, MSG_BAD_TOKEN))?;
        match store.find_by_id(id)? {
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

    pub(super) fn require_admin(&self, store: &Store, req: &AuthRequest) -> Result<User, Fail> {
        let u = self.authenticate(store, req)?;
        if u.is_admin() {
            Ok(u)
        } else {
            Err(fail(403, MSG_ADMIN_ONLY))
        }
    }
}
