//! Request bodies of the accounts routes and their validation into
//! store updates.

use mongodb::bson::{doc, Document};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::answers::*;
use crate::accounts::model::{self};

#[derive(Deserialize)]
pub(super) struct InviteBody {
    pub(super) email: String,
    #[serde(default)]
    pub(super) password: Option<String>,
    #[serde(default)]
    pub(super) role: Option<String>,
    /// The new user's profile (absent or null: empty).
    #[serde(flatten)]
    pub(super) profile: ProfilePatch,
}

#[derive(Deserialize)]
pub(super) struct SetupPasswordBody {
    pub(super) token: String,
    pub(super) password: String,
}

#[derive(Deserialize)]
pub(super) struct LoginBody {
    pub(super) email: String,
    pub(super) password: String,
}

/// Profile fields: on an invite, the new user's; on the PUT routes, what
/// changes (absent or null = unchanged, empty string = cleared).
#[derive(Deserialize, Default)]
pub(super) struct ProfilePatch {
    #[serde(default)]
    pub(super) first_name: Option<String>,
    #[serde(default)]
    pub(super) last_name: Option<String>,
    #[serde(default)]
    pub(super) nickname: Option<String>,
    #[serde(default)]
    pub(super) position: Option<String>,
    #[serde(default)]
    pub(super) discord_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct UpdateMeBody {
    #[serde(default)]
    pub(super) password: Option<String>,
    #[serde(flatten)]
    pub(super) profile: ProfilePatch,
}

#[derive(Deserialize)]
pub(super) struct UpdateUserBody {
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) role: Option<String>,
    #[serde(default)]
    pub(super) is_active: Option<bool>,
    #[serde(flatten)]
    pub(super) profile: ProfilePatch,
}

pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Fail> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(400, "A JSON request body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = crate::protocol::detail(e);
        fail(400, format!("Invalid request body: {msg}"))
    })
}

pub(super) fn opt_field(v: Option<&str>) -> Result<Option<String>, Fail> {
    match v {
        None => Ok(None),
        Some(v) => model::clean_profile_field(v).map_err(|e| fail(400, e)),
    }
}

/// `$set` entries for the profile fields present in a PUT body.
pub(super) fn profile_updates(p: &ProfilePatch) -> Result<Document, Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
