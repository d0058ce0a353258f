//! The user resources: `me` (read and update) and the admin's `users`
//! list, update and delete.

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use serde_json::{json, Value};

use super::answers::*;
use super::bodies::*;
use super::Service;
use crate::accounts::model::{self, User, ROLE_ADMIN};
use crate::accounts::password;
use crate::accounts::revoked::{self};
use crate::accounts::store::Store;
use crate::accounts::AuthRequest;

impl Service {
    pub(super) fn update_me(&self, store: &Store, req: &AuthRequest) -> Answer {
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
        let updated = store.find_and_update(doc! { "_id": user.id }, update)?;
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

    pub(super) fn list_users(&self, store: &Store, req: &AuthRequest) -> Answer {
        self.require_admin(store, req)?;
        let users: Vec<Value> = store.list()?.iter().map(User::admin_list_json).collect();
        Ok(json!({"success": true, "users": users}))
    }

    pub(super) fn update_user(&self, store: &Store, req: &AuthRequest, id: &str) -> Answer {
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
            .find_by_id(id)?
            .ok_or_else(|| fail(404, MSG_NO_USER))?;
        let stays_admin = role
            .as_deref()
            .map_or(target.is_admin(), |r| r == ROLE_ADMIN);
        let stays_active = body.is_active.unwrap_or(target.is_active);
        if target.is_admin()
            && target.is_active
            && !(stays_admin && stays_active)
            && store.count_other_active_admins(id)? == 0
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
        if !store.update(doc! { "_id": id }, update)? {
            return Err(fail(404, MSG_NO_USER));
        }
        if revoke {
            self.revoke_below(id, target.token_version + 1);
        }
        Ok(json!({"success": true}))
    }

    pub(super) fn delete_user(&self, store: &Store, req: &AuthRequest, id: &str) -> Answer {
        self.require_admin(store, req)?;
        let id = ObjectId::parse_str(id).map_err(|_| fail(404, MSG_NO_USER))?;
        let _guard = self.admin_lock.lock().unwrap_or_else(|e| e.into_inner());
        let target = store
            .find_by_id(id)?
            .ok_or_else(|| fail(404, MSG_NO_USER))?;
        if target.is_admin() && target.is_active && store.count_other_active_admins(id)? == 0 {
            return Err(fail(409, "The last admin cannot be deleted"));
        }
        if !store.delete(id)? {
            return Err(fail(404, MSG_NO_USER));
        }
        self.revoke_below(id, revoked::ALL);
        log::info!("accounts: user {} deleted", id.to_hex());
        Ok(json!({"success": true}))
    }
}
