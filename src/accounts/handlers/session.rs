//! Signing in and out: `login` with its rate limits, and `logout`.

use std::net::IpAddr;
use std::time::Instant;

use mongodb::bson::{doc, DateTime};
use serde_json::json;

use super::answers::*;
use super::bodies::*;
use super::Service;
use crate::accounts::model::{self};
use crate::accounts::password;
use crate::accounts::ratelimit::ip_key;
use crate::accounts::store::Store;
use crate::accounts::AuthRequest;

impl Service {
    pub(super) fn login(&self, store: &Store, req: &AuthRequest) -> Answer {
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
            Some(e) => store.find_by_email(e)?,
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

    pub(super) fn rate_limit(&self, ip: IpAddr, email: &str) -> Result<(), Fail> {
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
    pub(super) fn refund_login(&self, ip: IpAddr, email: &str) {
        let now = Instant::now();
        let mut ips = self.ip_limiter.lock().unwrap_or_else(|e| e.into_inner());
        let mut emails = self.email_limiter.lock().unwrap_or_else(|e| e.into_inner());
        ips.refund(&ip_key(ip), now);
        emails.refund(&(ip_key(ip), email.to_string()), now);
    }

    pub(super) fn logout(&self, store: &Store, req: &AuthRequest) -> Answer {
        let user = self.authenticate(store, req)?;
        // Conditional on the version we saw: a concurrent revocation has
        // already done the job.
        store.update(
            doc! { "_id": user.id, "token_version": user.token_version },
            doc! { "$inc": { "token_version": 1_i64 }, "$set": { "updated_at": DateTime::now() } },
        )?;
        self.revoke_below(user.id, user.token_version + 1);
        Ok(json!({"success": true}))
    }
}
