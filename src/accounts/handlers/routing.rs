//! The `/api/auth/*` table: path and method to handler, 404 and 405.

use super::answers::*;
use super::Service;
use crate::accounts::{AuthRequest, HttpReply};

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
    pub(super) fn http(&self, req: &AuthRequest) -> HttpReply {
        match self.route(req) {
            Ok(v) => crate::http::Answer::json(200, v).into(),
            Err(f) => f.into(),
        }
    }

    pub(super) fn route(&self, req: &AuthRequest) -> Answer {
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
}
