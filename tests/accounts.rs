//! Accounts (protocol §3 and `REQUIRE_AUTH`) against a real MongoDB-wire
//! database, never a mock. Run through `tools/with-secantus.sh` (which
//! `tools/test.sh` does); without `SYNC_TEST_MONGODB_URI` every test here
//! fails with a message saying so.
//!
//! Most tests drive the accounts layer in-process (real worker pool, real
//! database, a `mio::Waker` standing in for the server loop), each on a
//! database of its own. The `e2e_*` tests run the server binary and speak
//! HTTP and WebSocket to it.
//!
//! They need the MongoDB driver, so a lean build (`--no-default-features`)
//! compiles this file to nothing. (Not `required-features` in Cargo.toml: a
//! `[[test]]` entry makes cargo insist on this file existing, and the
//! Dockerfile builds from a tree without `tests/`.)
#![cfg(feature = "accounts")]

mod accounts_support;
mod common;

use std::time::{Duration, Instant};

use accounts_support::*;
use serde_json::{json, Value};
use sync_server::accounts::Job;

const ADMIN_EMAIL: &str = "admin@example.org";
const ADMIN_PW: &str = "admin password 1";

fn with_setup_token() -> [(&'static str, &'static str); 1] {
    [("INITIAL_SETUP_TOKEN", SETUP_TOKEN)]
}

// ----- first user, bootstrap admin ------------------------------------------

#[test]
fn first_user_needs_the_setup_token() {
    let mut h = Harness::start("first_user", &with_setup_token());
    h.secrets.push(ADMIN_PW.into());
    let body = json!({"email": ADMIN_EMAIL, "password": ADMIN_PW, "role": "user"});

    // Missing: 403, as the tracker's own backend answers.
    let r = h.post("/api/auth/invite").json(body.clone()).send();
    assert_eq!(r.status, 403, "{}", r.raw);
    // Wrong (same length, and a prefix).
    let wrong: String = SETUP_TOKEN.chars().rev().collect();
    let r = h
        .post("/api/auth/invite")
        .setup_token(&wrong)
        .json(body.clone())
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);
    let r = h
        .post("/api/auth/invite")
        .setup_token(&SETUP_TOKEN[..10])
        .json(body.clone())
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);
    // An admin-looking bearer token does not replace it.
    let forged = sign(
        &json!({"sub": "000000000000000000000000", "role": "admin", "iat": now_secs(), "exp": now_secs() + 60, "ver": 0}),
        JWT_SECRET,
    );
    let r = h
        .post("/api/auth/invite")
        .bearer(&forged)
        .json(body.clone())
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);
    assert!(h.raw_users().is_empty());

    // Right: created, and made an admin although "user" was asked for.
    let r = h
        .post("/api/auth/invite")
        .setup_token(SETUP_TOKEN)
        .json(body.clone())
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["activated"], true);
    let token = h.login(ADMIN_EMAIL, ADMIN_PW);
    let me = h.get("/api/auth/me").bearer(&token).send();
    assert_eq!(me.json["role"], "admin");

    // Once a user exists the setup token opens nothing: 409, the first
    // user is taken (issue 15: the README promises 409 to a first-user
    // request that lost).
    let r = h
        .post("/api/auth/invite")
        .setup_token(SETUP_TOKEN)
        .json(json!({"email": "second@example.org", "password": "second password"}))
        .send();
    assert_eq!(r.status, 409, "{}", r.raw);
    assert_eq!(h.raw_users().len(), 1);
}

#[test]
fn without_setup_token_the_system_cannot_be_initialised_over_http() {
    let mut h = Harness::start("no_setup_token", &[]);
    for token in [None, Some(""), Some("anything"), Some(SETUP_TOKEN)] {
        let mut req = h
            .post("/api/auth/invite")
            .json(json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}));
        if let Some(t) = token {
            req = req.setup_token(t);
        }
        let r = req.send();
        assert_eq!(r.status, 403, "{token:?}: {}", r.raw);
        assert!(r.error().contains("INITIAL_SETUP_TOKEN"), "{}", r.raw);
    }
    assert!(h.raw_users().is_empty());
}

#[test]
fn bootstrap_admin_from_environment() {
    let env = [
        ("INITIAL_ADMIN_EMAIL", "  Boss@Example.ORG "),
        ("INITIAL_ADMIN_PASSWORD", "bootstrap password"),
        ("INITIAL_ADMIN_NICKNAME", "Boss"),
    ];
    let mut h = Harness::start("bootstrap", &env);
    h.secrets.push("bootstrap password".into());
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "boss@example.org", "password": "bootstrap password"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["role"], "admin");
    assert_eq!(r.json["email"], "boss@example.org");
    assert_eq!(r.json["profile"]["nickname"], "Boss");
    assert_eq!(h.raw_users().len(), 1);

    // A second start on the same database creates nobody (users exist), even
    // with another bootstrap email.
    let (uri, db) = (h.uri.clone(), h.db_name.clone());
    h.shutdown();
    let mut env2 = env;
    env2[0] = ("INITIAL_ADMIN_EMAIL", "other@example.org");
    let h2 = Harness::start_on(&uri, &db, &env2);
    let users = h2.raw_users();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0].get_str("email").unwrap(), "boss@example.org");
    std::mem::forget(h); // h2 drops the database
}

// ----- invitations and setup links ---------------------------------------------

#[test]
fn invite_with_and_without_password_and_single_use_setup_links() {
    let mut h = Harness::start("invite", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);

    // With a password: active at once.
    h.secrets.push("member password".into());
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .json(json!({"email": "Member@Example.org", "password": "member password", "first_name": "Som", "last_name": "Chai", "nickname": "S", "position": "Dev", "discord_id": "som#1"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["activated"], true);
    assert!(r.json.get("setup_link").is_none());
    let login = h
        .post("/api/auth/login")
        .json(json!({"email": "member@example.org", "password": "member password"}))
        .send();
    assert_eq!(login.status, 200, "{}", login.raw);
    assert_eq!(login.json["role"], "user");
    assert_eq!(login.json["profile"]["first_name"], "Som");
    assert_eq!(login.json["profile"]["position"], "Dev");

    // Same email, other case and spacing: 409.
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .json(json!({"email": " MEMBER@example.ORG "}))
        .send();
    assert_eq!(r.status, 409, "{}", r.raw);

    // Without a password: a setup link.
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .json(json!({"email": "newbie@example.org", "role": "user"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let link = r.json["setup_link"].as_str().unwrap().to_string();
    let token = link
        .strip_prefix("/setup-password?token=")
        .expect(&link)
        .to_string();
    assert!(token.len() >= 32, "{token}");
    assert!(r.json.get("activated").is_none() || r.json["activated"] == false);

    // Pending: cannot log in (same answer as a wrong password).
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "newbie@example.org", "password": "whatever123"}))
        .send();
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "Invalid email or password");

    // setup-info.
    let r = h.get(&format!("/api/auth/setup-info?token={token}")).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["email"], "newbie@example.org");
    assert_eq!(h.get("/api/auth/setup-info").send().status, 400);
    assert_eq!(h.get("/api/auth/setup-info?token=").send().status, 400);
    assert_eq!(h.get("/api/auth/setup-info?token=nope").send().status, 404);

    // setup-password: validation, then success, then single use.
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": token, "password": "short"}))
        .send();
    assert_eq!(r.status, 400, "{}", r.raw);
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": "nope", "password": "long enough pw"}))
        .send();
    assert_eq!(r.status, 404, "{}", r.raw);
    h.secrets.push("newbie password".into());
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": token, "password": "newbie password"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["email"], "newbie@example.org");
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": token, "password": "another password"}))
        .send();
    assert_eq!(r.status, 404, "setup tokens are single-use: {}", r.raw);
    assert_eq!(
        h.get(&format!("/api/auth/setup-info?token={token}"))
            .send()
            .status,
        404
    );
    h.login("newbie@example.org", "newbie password");
    let stored = h.raw_user("newbie@example.org");
    assert!(stored.get("setup_token").is_none(), "{stored:?}");

    // Validation.
    for bad in [
        json!({"email": "not an email", "password": "long enough pw"}),
        json!({"email": "", "password": "long enough pw"}),
        json!({"email": "x@example.org", "password": "short"}),
        json!({"email": "x@example.org", "role": "root"}),
        json!({"password": "long enough pw"}),
        json!({"email": 5}),
    ] {
        let r = h
            .post("/api/auth/invite")
            .bearer(&admin)
            .json(bad.clone())
            .send();
        assert_eq!(r.status, 400, "{bad}: {}", r.raw);
    }
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .body(b"{not json")
        .send();
    assert_eq!(r.status, 400, "{}", r.raw);
    let r = h.post("/api/auth/invite").bearer(&admin).send();
    assert_eq!(r.status, 400, "{}", r.raw);

    // Only admins invite.
    let user = h.login("member@example.org", "member password");
    let r = h
        .post("/api/auth/invite")
        .bearer(&user)
        .json(json!({"email": "y@example.org"}))
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);
    let r = h
        .post("/api/auth/invite")
        .json(json!({"email": "y@example.org"}))
        .send();
    assert_eq!(r.status, 401, "{}", r.raw);
}

#[test]
fn a_pending_first_user_can_be_invited_again_with_the_setup_token() {
    let mut h = Harness::start("first_pending", &with_setup_token());
    let r = h
        .post("/api/auth/invite")
        .setup_token(SETUP_TOKEN)
        .json(json!({"email": "first@example.org"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let lost = r.json["setup_link"].as_str().unwrap().to_string();
    let lost = lost
        .strip_prefix("/setup-password?token=")
        .unwrap()
        .to_string();
    let id = h
        .raw_user("first@example.org")
        .get_object_id("_id")
        .unwrap();

    // Nobody has activated: without the setup token nothing gets in, a
    // wrong one neither.
    let r = h
        .post("/api/auth/invite")
        .json(json!({"email": "other@example.org"}))
        .send();
    assert_eq!(r.status, 401, "{}", r.raw);
    let r = h
        .post("/api/auth/invite")
        .setup_token("not the token")
        .json(json!({"email": "other@example.org"}))
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);

    // The setup token invites again (another address, with a password this
    // time); the pending user is replaced, not joined by a second one.
    h.secrets.push("first password".into());
    let r = h
        .post("/api/auth/invite")
        .setup_token(SETUP_TOKEN)
        .json(json!({"email": "admin2@example.org", "password": "first password"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json["activated"], true, "{}", r.raw);
    let users = h.raw_users();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0].get_object_id("_id").unwrap(), id);
    assert_eq!(users[0].get_str("role").unwrap(), "admin");
    let r = h.get(&format!("/api/auth/setup-info?token={lost}")).send();
    assert_eq!(r.status, 404, "the old link is void: {}", r.raw);
    let admin = h.login("admin2@example.org", "first password");

    // Once someone is active the setup token opens nothing: 409, the first
    // user is taken (issue 15, as for the losers of the first-user race).
    let r = h
        .post("/api/auth/invite")
        .setup_token(SETUP_TOKEN)
        .json(json!({"email": "third@example.org"}))
        .send();
    assert_eq!(r.status, 409, "{}", r.raw);
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .json(json!({"email": "third@example.org"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[test]
fn setup_links_expire_after_seven_days() {
    let mut h = Harness::start("setup_expiry", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let invite = |h: &mut Harness, email: &str| -> String {
        let r = h
            .post("/api/auth/invite")
            .bearer(&admin)
            .json(json!({ "email": email }))
            .send();
        assert_eq!(r.status, 200, "{}", r.raw);
        let link = r.json["setup_link"].as_str().unwrap().to_string();
        link.strip_prefix("/setup-password?token=")
            .unwrap()
            .to_string()
    };
    let fresh = invite(&mut h, "fresh@example.org");
    let old = invite(&mut h, "old@example.org");

    // The stored expiry is a week out.
    let stored = h.raw_user("fresh@example.org");
    let exp = stored.get_datetime("setup_token_expires_at").unwrap();
    let week_ms = 7 * 24 * 3600 * 1000_i64;
    let now_ms = mongodb::bson::DateTime::now().timestamp_millis();
    assert!((exp.timestamp_millis() - now_ms - week_ms).abs() < 60_000);

    // Age one invitation past its expiry.
    let past = mongodb::bson::DateTime::from_millis(now_ms - 1000);
    h.raw_update_user(
        "old@example.org",
        mongodb::bson::doc! { "$set": { "setup_token_expires_at": past } },
    );
    let r = h.get(&format!("/api/auth/setup-info?token={old}")).send();
    assert_eq!(r.status, 404, "{}", r.raw);
    assert_eq!(r.error(), "Invalid, expired or already used setup token");
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": old, "password": "a good password"}))
        .send();
    assert_eq!(r.status, 404, "{}", r.raw);
    assert!(h
        .raw_user("old@example.org")
        .get_str("password_hash")
        .is_err());

    // The fresh one still works, and using it clears token and expiry.
    let r = h
        .post("/api/auth/setup-password")
        .json(json!({"token": fresh, "password": "a good password"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let stored = h.raw_user("fresh@example.org");
    assert!(stored.get("setup_token").is_none());
    assert!(stored.get("setup_token_expires_at").is_none());
}

#[test]
fn concurrent_invites_of_one_email_create_one_user() {
    let mut h = Harness::start(
        "dup_race",
        &[
            ("INITIAL_SETUP_TOKEN", SETUP_TOKEN),
            ("ACCOUNT_WORKERS", "4"),
        ],
    );
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    for round in 0..3 {
        let email = format!("race{round}@example.org");
        let tags: Vec<u64> = (0..4)
            .map(|i| {
                let body =
                    json!({"email": if i % 2 == 0 { email.to_uppercase() } else { email.clone() }});
                h.post("/api/auth/invite")
                    .bearer(&admin)
                    .json(body)
                    .submit()
            })
            .collect();
        let mut statuses: Vec<u16> = tags
            .into_iter()
            .map(|t| match h.wait(t, Duration::from_secs(30)) {
                sync_server::accounts::Reply::Http(r) => r.status,
                other => panic!("{other:?}"),
            })
            .collect();
        statuses.sort();
        assert_eq!(statuses, vec![200, 409, 409, 409], "round {round}");
    }
    assert_eq!(h.raw_users().len(), 4);
}

#[test]
fn concurrent_first_user_invites_create_one_admin() {
    let mut h = Harness::start(
        "first_race",
        &[
            ("INITIAL_SETUP_TOKEN", SETUP_TOKEN),
            ("ACCOUNT_WORKERS", "4"),
        ],
    );
    // Four holders of the setup token, four different emails, all at once:
    // "no users yet" is true for each of them when they look.
    let tags: Vec<u64> = (0..4)
        .map(|i| {
            let body =
                json!({"email": format!("first{i}@example.org"), "password": "first password"});
            h.post("/api/auth/invite")
                .setup_token(SETUP_TOKEN)
                .json(body)
                .submit()
        })
        .collect();
    let statuses: Vec<u16> = tags
        .into_iter()
        .map(|t| match h.wait(t, Duration::from_secs(30)) {
            sync_server::accounts::Reply::Http(r) => r.status,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "exactly one first user: {statuses:?}"
    );
    // The others lost, whether to the claim or to the finished insert: 409.
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 409)),
        "{statuses:?}"
    );
    let users = h.raw_users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].get_str("role").unwrap(), "admin");
}

// ----- login -----------------------------------------------------------------------

#[test]
fn login_rules() {
    let mut h = Harness::start("login", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    h.add_user(&admin, "Case.Person@Example.org", "person password", "user");

    // Trimmed and case-insensitive.
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "  CASE.person@EXAMPLE.ORG ", "password": "person password"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    for field in ["id", "user_id", "email", "role", "token"] {
        assert!(r.json[field].is_string(), "{field}: {}", r.raw);
    }
    assert!(r.json["profile"].is_object(), "{}", r.raw);
    assert_eq!(r.json["email"], "case.person@example.org");
    let claims = claims_of(&r.token());
    assert_eq!(claims["sub"], r.json["id"]);
    assert_eq!(claims["role"], "user");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 7 * 24 * 3600);
    assert!(iat.abs_diff(now_secs()) <= 2);

    // Unknown email and wrong password: same status, same text, similar time.
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..3 {
        let a = h
            .post("/api/auth/login")
            .json(json!({"email": format!("nobody{i}@example.org"), "password": "person password"}))
            .send();
        let b = h.post("/api/auth/login").json(json!({"email": "case.person@example.org", "password": format!("wrong password {i}")})).send();
        assert_eq!((a.status, b.status), (401, 401));
        assert_eq!(a.raw, b.raw);
        unknown.push(a.elapsed);
        wrong.push(b.elapsed);
    }
    let (u, w) = (unknown.iter().min().unwrap(), wrong.iter().min().unwrap());
    // Both run one argon2 verification; a missing user must not answer in a
    // fraction of the time.
    assert!(
        u.as_secs_f64() > w.as_secs_f64() * 0.4,
        "unknown email {u:?} vs wrong password {w:?}"
    );
    // Malformed email: same answer too.
    let c = h
        .post("/api/auth/login")
        .json(json!({"email": "no-at-sign", "password": "person password"}))
        .send();
    assert_eq!(c.status, 401);
    // Missing fields: 400.
    assert_eq!(
        h.post("/api/auth/login")
            .json(json!({"email": "a@b.c"}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.post("/api/auth/login")
            .json(json!({"email": "", "password": ""}))
            .send()
            .status,
        400
    );
    assert_eq!(h.post("/api/auth/login").send().status, 400);
}

#[test]
fn login_is_rate_limited_per_address_and_per_email() {
    // Buckets of 6 per address and 4 per email that refill only hourly, so a
    // slow machine cannot refill them in the middle of the test.
    let mut h = Harness::start_with(
        &mongo_uri(),
        &unique_db("ratelimit"),
        &with_setup_token(),
        |cfg| {
            cfg.login_limits.per_ip_burst = 6;
            cfg.login_limits.per_ip_refill = Duration::from_secs(3600);
            cfg.login_limits.per_email_burst = 4;
            cfg.login_limits.per_email_refill = Duration::from_secs(3600);
        },
    );
    h.wait_ready(Duration::from_secs(30));
    let _admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);

    // Successful logins do not count: far more than either burst, from one
    // address, all succeed.
    for _ in 0..12 {
        let r = h
            .post("/api/auth/login")
            .ip("198.51.100.7")
            .json(json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}))
            .send();
        assert_eq!(r.status, 200, "{}", r.raw);
    }

    // Per client and email (issue 15: no longer per email alone, which let
    // a guesser anywhere lock the owner out): 4 failed attempts from one
    // address, then 429 there, even for the right password ...
    for _ in 0..4 {
        let r = h
            .post("/api/auth/login")
            .ip("10.0.0.1")
            .json(json!({"email": ADMIN_EMAIL, "password": "wrong password"}))
            .send();
        assert_eq!(r.status, 401, "{}", r.raw);
    }
    let r = h
        .post("/api/auth/login")
        .ip("10.0.0.1")
        .json(json!({"email": ADMIN_EMAIL.to_uppercase(), "password": ADMIN_PW}))
        .send();
    assert_eq!(r.status, 429, "{}", r.raw);
    let after = r.retry_after.expect("Retry-After on 429");
    assert!((3000..=3600).contains(&after), "{after}");
    assert!(r.error().contains("Too many"), "{}", r.raw);
    // ... while the owner elsewhere gets in at once.
    let r = h
        .post("/api/auth/login")
        .ip("10.0.0.9")
        .json(json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);

    // Per address: 6 attempts against different emails, then 429 for any.
    for i in 0..6 {
        let r = h
            .post("/api/auth/login")
            .ip("192.0.2.1")
            .json(json!({"email": format!("u{i}@example.org"), "password": "wrong password"}))
            .send();
        assert_eq!(r.status, 401, "{}", r.raw);
    }
    let r = h
        .post("/api/auth/login")
        .ip("192.0.2.1")
        .json(json!({"email": "fresh@example.org", "password": "wrong password"}))
        .send();
    assert_eq!(r.status, 429, "{}", r.raw);
    assert!(r.retry_after.unwrap() >= 1);
    // IPv6 neighbours in the same /64 share the budget.
    for i in 0..6 {
        let r = h
            .post("/api/auth/login")
            .ip(&format!("2001:db8::{i}"))
            .json(json!({"email": format!("v{i}@example.org"), "password": "wrong password"}))
            .send();
        assert_eq!(r.status, 401, "{}", r.raw);
    }
    let r = h
        .post("/api/auth/login")
        .ip("2001:db8::ffff")
        .json(json!({"email": "w@example.org", "password": "wrong password"}))
        .send();
    assert_eq!(r.status, 429, "{}", r.raw);
    // Another address still gets in.
    let r = h
        .post("/api/auth/login")
        .ip("198.51.100.7")
        .json(json!({"email": "other@example.org", "password": "wrong password"}))
        .send();
    assert_eq!(r.status, 401, "{}", r.raw);
}

#[test]
fn wrong_setup_tokens_are_rate_limited_per_client_and_in_total() {
    let mut h = Harness::start_with(
        &mongo_uri(),
        &unique_db("setup_limit"),
        &with_setup_token(),
        |cfg| {
            cfg.setup_limits.per_ip_burst = 3;
            cfg.setup_limits.per_ip_refill = Duration::from_secs(3600);
            cfg.setup_limits.total_burst = 5;
            cfg.setup_limits.total_refill = Duration::from_secs(3600);
        },
    );
    h.wait_ready(Duration::from_secs(30));
    let body = json!({"email": ADMIN_EMAIL, "password": ADMIN_PW});
    let wrong: String = SETUP_TOKEN.chars().rev().collect();
    let invite = |h: &mut Harness, ip: &str, token: &str| {
        h.post("/api/auth/invite")
            .ip(ip)
            .setup_token(token)
            .json(body.clone())
            .send()
    };
    // Per client: 3 wrong tokens, then 429, the right token too.
    for _ in 0..3 {
        assert_eq!(invite(&mut h, "192.0.2.1", &wrong).status, 403);
    }
    let r = invite(&mut h, "192.0.2.1", &wrong);
    assert_eq!(r.status, 429, "{}", r.raw);
    assert!(r.retry_after.unwrap() >= 1);
    assert_eq!(invite(&mut h, "192.0.2.1", SETUP_TOKEN).status, 429);
    // In total: 2 more wrong ones from elsewhere use up the server's 5.
    assert_eq!(invite(&mut h, "192.0.2.2", &wrong).status, 403);
    assert_eq!(invite(&mut h, "192.0.2.3", &wrong).status, 403);
    let r = invite(&mut h, "192.0.2.4", &wrong);
    assert_eq!(r.status, 429, "{}", r.raw);
    assert!(h.raw_users().is_empty());
}

#[test]
fn a_right_setup_token_spends_nothing() {
    let mut h = Harness::start_with(
        &mongo_uri(),
        &unique_db("setup_ok"),
        &with_setup_token(),
        |cfg| {
            cfg.setup_limits.per_ip_burst = 1;
            cfg.setup_limits.per_ip_refill = Duration::from_secs(3600);
        },
    );
    h.wait_ready(Duration::from_secs(30));
    h.secrets.push(ADMIN_PW.into());
    // The first user invited without a password, then again (its link
    // lost): both with the right token, both fine.
    for _ in 0..2 {
        let r = h
            .post("/api/auth/invite")
            .ip("192.0.2.9")
            .setup_token(SETUP_TOKEN)
            .json(json!({"email": ADMIN_EMAIL}))
            .send();
        assert_eq!(r.status, 200, "{}", r.raw);
    }
}

// ----- me ------------------------------------------------------------------------------

#[test]
fn me_and_update_me() {
    let mut h = Harness::start("me", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let token = h.add_user(&admin, "me@example.org", "my password 1", "user");

    let r = h.get("/api/auth/me").bearer(&token).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    for field in ["id", "user_id", "email", "role"] {
        assert!(r.json[field].is_string(), "{field}: {}", r.raw);
    }
    assert_eq!(r.json["is_active"], true);
    assert_eq!(r.json["email"], "me@example.org");
    assert!(r.json["profile"].is_object());

    let r = h
        .put("/api/auth/me")
        .bearer(&token)
        .json(json!({"first_name": "  Nok ", "last_name": "Kaew", "nickname": "N", "position": "QA", "discord_id": "nok#2"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let me = h.get("/api/auth/me").bearer(&token).send();
    assert_eq!(me.json["profile"]["first_name"], "Nok");
    assert_eq!(me.json["profile"]["last_name"], "Kaew");
    assert_eq!(me.json["profile"]["position"], "QA");
    assert_eq!(me.json["discord_id"], "nok#2");
    // Empty clears, absent keeps.
    let r = h
        .put("/api/auth/me")
        .bearer(&token)
        .json(json!({"last_name": ""}))
        .send();
    assert_eq!(r.status, 200);
    let me = h.get("/api/auth/me").bearer(&token).send();
    assert_eq!(me.json["profile"]["last_name"], Value::Null);
    assert_eq!(me.json["profile"]["first_name"], "Nok");

    // Validation.
    assert_eq!(
        h.put("/api/auth/me")
            .bearer(&token)
            .json(json!({"password": "short"}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.put("/api/auth/me")
            .bearer(&token)
            .json(json!({"nickname": "x".repeat(500)}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.put("/api/auth/me")
            .bearer(&token)
            .json(json!({"nickname": 7}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.put("/api/auth/me")
            .json(json!({"nickname": "x"}))
            .send()
            .status,
        401
    );
    assert_eq!(h.get("/api/auth/me").send().status, 401);

    // Password change: old tokens revoked, the answer carries a fresh one.
    let other_session = h.login("me@example.org", "my password 1");
    h.secrets.push("my password 2".into());
    let r = h
        .put("/api/auth/me")
        .bearer(&token)
        .json(json!({"password": "my password 2"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let fresh = r.token();
    assert_eq!(h.get("/api/auth/me").bearer(&token).send().status, 401);
    assert_eq!(
        h.get("/api/auth/me").bearer(&other_session).send().status,
        401
    );
    assert_eq!(h.get("/api/auth/me").bearer(&fresh).send().status, 200);
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "me@example.org", "password": "my password 1"}))
        .send();
    assert_eq!(r.status, 401);
    h.login("me@example.org", "my password 2");
}

// ----- users (admin) ------------------------------------------------------------------------

#[test]
fn users_list_update_delete_as_admin_and_not() {
    let mut h = Harness::start("users", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let user = h.add_user(&admin, "plain@example.org", "plain password", "user");
    let r = h
        .post("/api/auth/invite")
        .bearer(&admin)
        .json(json!({"email": "pending@example.org"}))
        .send();
    assert_eq!(r.status, 200);

    // List.
    let r = h.get("/api/auth/users").bearer(&admin).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let users = r.json["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 3);
    let by_email = |e: &str| users.iter().find(|u| u["email"] == e).unwrap().clone();
    let plain = by_email("plain@example.org");
    assert_eq!(plain["role"], "user");
    assert_eq!(plain["is_active"], true);
    assert!(plain["id"].is_string() && plain["user_id"].is_string());
    let pending = by_email("pending@example.org");
    assert_eq!(pending["is_active"], false);
    assert!(pending["setup_link"]
        .as_str()
        .unwrap()
        .starts_with("/setup-password?token="));
    let plain_id = plain["id"].as_str().unwrap().to_string();
    let pending_id = pending["id"].as_str().unwrap().to_string();
    let admin_id = by_email(ADMIN_EMAIL)["id"].as_str().unwrap().to_string();

    // Non-admins and strangers.
    assert_eq!(h.get("/api/auth/users").bearer(&user).send().status, 403);
    assert_eq!(h.get("/api/auth/users").send().status, 401);
    let path = format!("/api/auth/users/{plain_id}");
    assert_eq!(
        h.put(&path)
            .bearer(&user)
            .json(json!({"role": "admin"}))
            .send()
            .status,
        403
    );
    assert_eq!(h.delete(&path).bearer(&user).send().status, 403);
    assert_eq!(
        h.put(&path).json(json!({"role": "admin"})).send().status,
        401
    );
    assert_eq!(
        h.delete(&format!("/api/auth/users/{admin_id}"))
            .bearer(&user)
            .send()
            .status,
        403
    );

    // Unknown ids.
    for id in ["000000000000000000000000", "not-an-object-id"] {
        let p = format!("/api/auth/users/{id}");
        assert_eq!(
            h.put(&p)
                .bearer(&admin)
                .json(json!({"nickname": "x"}))
                .send()
                .status,
            404
        );
        assert_eq!(h.delete(&p).bearer(&admin).send().status, 404);
    }

    // Update: profile, email, role; duplicate email → 409 (the index decides).
    let r = h
        .put(&path)
        .bearer(&admin)
        .json(json!({"nickname": "Plain", "position": "Ops", "email": " Renamed@Example.org"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    let stored = h.raw_user("renamed@example.org");
    assert_eq!(
        stored
            .get_document("profile")
            .unwrap()
            .get_str("nickname")
            .unwrap(),
        "Plain"
    );
    let r = h
        .put(&path)
        .bearer(&admin)
        .json(json!({"email": "PENDING@example.org"}))
        .send();
    assert_eq!(r.status, 409, "{}", r.raw);
    assert_eq!(
        h.put(&path)
            .bearer(&admin)
            .json(json!({"role": "owner"}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.put(&path)
            .bearer(&admin)
            .json(json!({"is_active": "no"}))
            .send()
            .status,
        400
    );
    assert_eq!(
        h.put(&path)
            .bearer(&admin)
            .json(json!({"email": "bad"}))
            .send()
            .status,
        400
    );
    // The user's token survived profile edits...
    assert_eq!(h.get("/api/auth/me").bearer(&user).send().status, 200);
    // ...promotion makes them an admin (and asks them to sign in again).
    let r = h
        .put(&path)
        .bearer(&admin)
        .json(json!({"role": "admin"}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.get("/api/auth/me").bearer(&user).send().status, 401);
    let promoted = h.login("renamed@example.org", "plain password");
    assert_eq!(
        h.get("/api/auth/users").bearer(&promoted).send().status,
        200
    );
    // Deactivation: tokens stop working, login says so.
    let r = h
        .put(&path)
        .bearer(&admin)
        .json(json!({"is_active": false}))
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.get("/api/auth/me").bearer(&promoted).send().status, 401);
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "renamed@example.org", "password": "plain password"}))
        .send();
    assert_eq!(r.status, 403, "{}", r.raw);
    // Reactivated: old tokens stay dead, a new login works.
    assert_eq!(
        h.put(&path)
            .bearer(&admin)
            .json(json!({"is_active": true}))
            .send()
            .status,
        200
    );
    assert_eq!(h.get("/api/auth/me").bearer(&promoted).send().status, 401);
    let again = h.login("renamed@example.org", "plain password");

    // Delete.
    let r = h
        .delete(&format!("/api/auth/users/{pending_id}"))
        .bearer(&admin)
        .send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        h.delete(&format!("/api/auth/users/{pending_id}"))
            .bearer(&admin)
            .send()
            .status,
        404
    );
    let r = h.delete(&path).bearer(&admin).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.get("/api/auth/me").bearer(&again).send().status, 401);
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": "renamed@example.org", "password": "plain password"}))
        .send();
    assert_eq!(r.status, 401);
    assert_eq!(h.raw_users().len(), 1);
}

#[test]
fn last_admin_cannot_be_deleted_demoted_or_deactivated() {
    let mut h = Harness::start("last_admin", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let admin_id = h.get("/api/auth/me").bearer(&admin).send().json["id"]
        .as_str()
        .unwrap()
        .to_string();
    let me_path = format!("/api/auth/users/{admin_id}");

    let r = h.delete(&me_path).bearer(&admin).send();
    assert_eq!(r.status, 409, "{}", r.raw);
    assert!(r.error().contains("last admin"), "{}", r.raw);
    assert_eq!(
        h.put(&me_path)
            .bearer(&admin)
            .json(json!({"role": "user"}))
            .send()
            .status,
        409
    );
    assert_eq!(
        h.put(&me_path)
            .bearer(&admin)
            .json(json!({"is_active": false}))
            .send()
            .status,
        409
    );
    // Harmless edits of the last admin are fine.
    assert_eq!(
        h.put(&me_path)
            .bearer(&admin)
            .json(json!({"nickname": "Root", "role": "admin"}))
            .send()
            .status,
        200
    );

    // A deactivated second admin does not count as another admin.
    let second = h.add_user(&admin, "second@example.org", "second password", "admin");
    let second_id = h.get("/api/auth/me").bearer(&second).send().json["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second_path = format!("/api/auth/users/{second_id}");
    assert_eq!(
        h.put(&second_path)
            .bearer(&admin)
            .json(json!({"is_active": false}))
            .send()
            .status,
        200
    );
    assert_eq!(h.delete(&me_path).bearer(&admin).send().status, 409);

    // With a second active admin, the first can go (even by itself).
    assert_eq!(
        h.put(&second_path)
            .bearer(&admin)
            .json(json!({"is_active": true}))
            .send()
            .status,
        200
    );
    let second = h.login("second@example.org", "second password");
    let r = h.delete(&me_path).bearer(&admin).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.get("/api/auth/me").bearer(&admin).send().status, 401);
    // And now the second one is the last.
    assert_eq!(h.delete(&second_path).bearer(&second).send().status, 409);
}

// ----- tokens ------------------------------------------------------------------------------

#[test]
fn bad_tokens_are_401() {
    let mut h = Harness::start("tokens", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let claims = claims_of(&admin);
    let sub = claims["sub"].as_str().unwrap().to_string();
    let ver = claims["ver"].clone();
    assert_eq!(h.get("/api/auth/me").bearer(&admin).send().status, 200);

    // Tampered: flip one character of the signature, or of the payload.
    let mut sig_tampered = admin.clone().into_bytes();
    let last = sig_tampered.len() - 2;
    sig_tampered[last] = if sig_tampered[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let sig_tampered = String::from_utf8(sig_tampered).unwrap();
    let parts: Vec<&str> = admin.split('.').collect();
    let payload = b64url(json!({"sub": sub, "role": "admin", "iat": now_secs(), "exp": now_secs() + 999_999, "ver": ver}).to_string().as_bytes());
    let payload_tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    // alg:none, with and without a signature part.
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{payload}.");
    let alg_none_sig = format!("{none_header}.{payload}.{}", parts[2]);
    // Right secret, but expired; wrong secret; a user that does not exist.
    let expired = sign(
        &json!({"sub": sub, "role": "admin", "iat": now_secs() - 700_000, "exp": now_secs() - 10, "ver": ver}),
        JWT_SECRET,
    );
    let other_secret = sign(
        &json!({"sub": sub, "role": "admin", "iat": now_secs(), "exp": now_secs() + 60, "ver": ver}),
        "another secret that is long enough!!",
    );
    let ghost = sign(
        &json!({"sub": "0123456789abcdef01234567", "role": "admin", "iat": now_secs(), "exp": now_secs() + 60, "ver": 0}),
        JWT_SECRET,
    );
    let not_hex = sign(
        &json!({"sub": "admin", "role": "admin", "iat": now_secs(), "exp": now_secs() + 60, "ver": 0}),
        JWT_SECRET,
    );

    for (name, t) in [
        ("signature tampered", sig_tampered.as_str()),
        ("payload tampered", payload_tampered.as_str()),
        ("alg none", alg_none.as_str()),
        ("alg none with signature", alg_none_sig.as_str()),
        ("expired", expired.as_str()),
        ("other secret", other_secret.as_str()),
        ("unknown user", ghost.as_str()),
        ("sub not an id", not_hex.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let r = h.get("/api/auth/me").bearer(t).send();
        assert_eq!(r.status, 401, "{name}: {}", r.raw);
        assert_eq!(
            h.get("/api/auth/users").bearer(t).send().status,
            401,
            "{name}"
        );
        assert!(!h.authorize(t), "{name} must not authorize a room");
    }
    for header in ["Basic YWRtaW46YWRtaW4=", "Bearer", "", &admin] {
        let r = h.get("/api/auth/me").authorization(header).send();
        assert_eq!(r.status, 401, "{header:?}: {}", r.raw);
    }
    // A correctly signed token with the right version still works.
    let resigned = sign(
        &json!({"sub": sub, "role": "admin", "iat": now_secs(), "exp": now_secs() + 60, "ver": ver}),
        JWT_SECRET,
    );
    assert_eq!(h.get("/api/auth/me").bearer(&resigned).send().status, 200);
}

#[test]
fn logout_revokes_and_a_new_login_works_at_once() {
    let mut h = Harness::start("logout", &with_setup_token());
    let first = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let second = h.login(ADMIN_EMAIL, ADMIN_PW);
    assert!(h.authorize(&first));

    assert_eq!(h.post("/api/auth/logout").send().status, 401);
    let r = h.post("/api/auth/logout").bearer(&first).send();
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.json, json!({"success": true}));
    // Every earlier token of the user stops working, also for rooms.
    assert_eq!(h.get("/api/auth/me").bearer(&first).send().status, 401);
    assert_eq!(h.get("/api/auth/me").bearer(&second).send().status, 401);
    assert_eq!(h.post("/api/auth/logout").bearer(&first).send().status, 401);
    assert!(!h.authorize(&first));
    // A login right after the logout works (revocation is by version, not
    // by time, so even the same second is fine).
    let third = h.login(ADMIN_EMAIL, ADMIN_PW);
    assert_ne!(claims_of(&third)["ver"], claims_of(&first)["ver"]);
    assert_eq!(h.get("/api/auth/me").bearer(&third).send().status, 200);
    assert!(h.authorize(&third));
}

// ----- routing, storage, pool ---------------------------------------------------------------

#[test]
fn routing_404_405_and_json_errors() {
    let mut h = Harness::start("routing", &with_setup_token());
    for (m, p) in [
        ("GET", "/api/auth/"),
        ("GET", "/api/auth/nope"),
        ("POST", "/api/auth/login/extra"),
        ("GET", "/api/auth/users/a/b"),
        ("PUT", "/api/auth/users/"),
    ] {
        let r = h.req(m, p).send();
        assert_eq!(r.status, 404, "{m} {p}: {}", r.raw);
    }
    for (m, p, allow) in [
        ("GET", "/api/auth/login", "POST"),
        ("GET", "/api/auth/invite", "POST"),
        ("PUT", "/api/auth/logout", "POST"),
        ("POST", "/api/auth/setup-info", "GET"),
        ("GET", "/api/auth/setup-password", "POST"),
        ("DELETE", "/api/auth/me", "GET, PUT"),
        ("POST", "/api/auth/users", "GET"),
        ("GET", "/api/auth/users/abc", "PUT, DELETE"),
    ] {
        let r = h.req(m, p).send();
        assert_eq!(r.status, 405, "{m} {p}: {}", r.raw);
        assert_eq!(r.allow, Some(allow), "{m} {p}");
    }
}

#[test]
fn stored_hash_is_argon2id_and_no_answer_leaks_it() {
    let mut h = Harness::start("storage", &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    h.add_user(&admin, "u@example.org", "user password", "user");
    for doc in h.raw_users() {
        let hash = doc.get_str("password_hash").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hash.contains("user password") && !hash.contains(ADMIN_PW));
        h.secrets.push(hash.to_string());
        // Emails are stored normalised.
        let email = doc.get_str("email").unwrap();
        assert_eq!(email, email.trim().to_lowercase());
    }
    // Every route that returns user data, with the hashes now in `secrets`
    // (checked inside `send`).
    let r = h.get("/api/auth/users").bearer(&admin).send();
    assert_eq!(r.status, 200);
    h.get("/api/auth/me").bearer(&admin).send();
    h.post("/api/auth/login")
        .json(json!({"email": "u@example.org", "password": "user password"}))
        .send();
    h.post("/api/auth/login")
        .json(json!({"email": "u@example.org", "password": "wrong password"}))
        .send();
    h.put("/api/auth/me")
        .bearer(&admin)
        .json(json!({"nickname": "A"}))
        .send();
}

#[test]
fn full_queue_is_refused_at_once_and_every_job_gets_one_reply() {
    let mut h = Harness::start(
        "queue",
        &[
            ("INITIAL_SETUP_TOKEN", SETUP_TOKEN),
            ("ACCOUNT_WORKERS", "1"),
            ("ACCOUNT_QUEUE", "2"),
            ("LOGIN_RATE_PER_IP", "1000"),
        ],
    );
    let login = || {
        Job::Http(sync_server::accounts::AuthRequest {
            method: "POST".into(),
            path: "/api/auth/login".into(),
            query: None,
            authorization: None,
            setup_token: None,
            body: json!({"email": "x@example.org", "password": "some password"})
                .to_string()
                .into_bytes(),
            client_ip: "127.0.0.1".parse().unwrap(),
        })
    };
    let mut accepted = Vec::new();
    let mut refused = 0;
    // A submit that waited for room in the queue would end up accepting
    // all ten; refusals show that a full queue answers at once.
    for _ in 0..10 {
        match h.try_submit(login()) {
            Some(tag) => accepted.push(tag),
            None => refused += 1,
        }
    }
    assert!(
        refused >= 6,
        "one worker and a queue of 2 cannot take 10 jobs at once (refused {refused})"
    );
    for tag in accepted {
        match h.wait(tag, Duration::from_secs(30)) {
            sync_server::accounts::Reply::Http(r) => assert_eq!(r.status, 401),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.accounts().store_status(), "ok");
}

// ----- outage ----------------------------------------------------------------------------------

#[test]
fn a_job_that_waited_past_the_reply_timeout_is_not_carried_out() {
    let daemon = Daemon::start();
    let env = [
        ("INITIAL_SETUP_TOKEN", SETUP_TOKEN),
        ("ACCOUNT_WORKERS", "1"),
    ];
    let mut h = Harness::start_on(&daemon.uri(), &unique_db("stale_job"), &env);
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    let user = h.add_user(&admin, "queued@example.org", "queued password", "user");

    // The one worker hangs on the first logout; the second waits in the
    // queue until the loop would long have answered 503 for it.
    daemon.freeze();
    let first = h.post("/api/auth/logout").bearer(&admin).submit();
    let second = h.post("/api/auth/logout").bearer(&user).submit();
    // Past the loop's reply timeout and the workers' margin after it.
    std::thread::sleep(sync_server::accounts::REPLY_TIMEOUT + Duration::from_millis(1000));
    daemon.thaw();
    let _ = h.wait(first, Duration::from_secs(30));
    match h.wait(second, Duration::from_secs(30)) {
        sync_server::accounts::Reply::Http(r) => assert_eq!(r.status, 503),
        other => panic!("{other:?}"),
    }
    // So the user's session was not ended behind its back.
    let r = h.get("/api/auth/me").bearer(&user).send();
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[test]
fn database_outage_gives_503_within_5s_and_recovers() {
    let mut daemon = Daemon::start();
    let mut h = Harness::start_on(&daemon.uri(), &unique_db("outage"), &with_setup_token());
    let admin = h.first_admin(ADMIN_EMAIL, ADMIN_PW);
    assert_eq!(h.accounts().store_status(), "ok");

    daemon.stop();
    // Every route answers 503 within 5 s (server selection gives up at 2 s).
    for (method, path, body) in [
        (
            "POST",
            "/api/auth/login",
            json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}),
        ),
        ("GET", "/api/auth/me", Value::Null),
        ("GET", "/api/auth/users", Value::Null),
    ] {
        let t0 = Instant::now();
        let mut req = h.req(method, path).bearer(&admin);
        if !body.is_null() {
            req = req.json(body);
        }
        let r = req.send_within(Duration::from_secs(6));
        assert_eq!(r.status, 503, "{method} {path}: {}", r.raw);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{method} {path} took {:?}",
            t0.elapsed()
        );
    }
    assert_eq!(h.accounts().store_status(), "unavailable");
    // Rooms keep working: a signed, unexpired token still opens them.
    let t0 = Instant::now();
    assert!(h.authorize(&admin));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "authorize during an outage took {:?}",
        t0.elapsed()
    );
    assert!(!h.authorize("garbage"));

    daemon.restart();
    let t0 = Instant::now();
    loop {
        let r = h.get("/api/auth/me").bearer(&admin).send();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.raw);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no recovery within 30 s; daemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "accounts recovered {:?} after the daemon restarted",
        t0.elapsed()
    );
    h.login(ADMIN_EMAIL, ADMIN_PW);
    let t1 = Instant::now();
    while h.accounts().store_status() != "ok" {
        assert!(t1.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn start_with_the_database_down_then_up() {
    let mut daemon = Daemon::start();
    daemon.stop();
    let t0 = Instant::now();
    let mut h = Harness::start_no_wait(
        &daemon.uri(),
        &unique_db("late_db"),
        &[
            ("INITIAL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("INITIAL_ADMIN_PASSWORD", ADMIN_PW),
        ],
    );
    // The database stays down until `restart` below, so a start that
    // waited for it would never come back: any deadline tells the two
    // apart, and a generous one does not depend on the machine's load.
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "start must not wait for the database"
    );
    let r = h
        .post("/api/auth/login")
        .json(json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}))
        .send_within(Duration::from_secs(6));
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(h.accounts().store_status(), "unavailable");
    daemon.restart();
    // The maintenance thread connects, makes indexes and the bootstrap admin.
    h.wait_ready(Duration::from_secs(30));
    h.secrets.push(ADMIN_PW.into());
    h.login(ADMIN_EMAIL, ADMIN_PW);
    assert_eq!(h.accounts().store_status(), "ok");
}

#[test]
fn shutdown_is_bounded() {
    let mut h = Harness::start("shutdown", &[]);
    let t0 = Instant::now();
    h.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

// ----- end to end: the server binary -------------------------------------------------------------

mod e2e {
    use super::common::{http, Client, TestServer};
    use super::*;
    use std::io::Write;

    fn server(db: &str, uri: &str, extra: &[(&str, &str)]) -> TestServer {
        let mut env: Vec<(&str, &str)> = vec![
            ("MONGODB_URI", uri),
            ("DB_NAME", db),
            ("JWT_SECRET", JWT_SECRET),
            ("INITIAL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("INITIAL_ADMIN_PASSWORD", ADMIN_PW),
            ("INITIAL_ADMIN_NICKNAME", "Admin"),
        ];
        env.extend_from_slice(extra);
        TestServer::start(&env)
    }

    fn post_json(
        s: &TestServer,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> common::Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        http(s.addr, "POST", path, &headers, body.to_string().as_bytes())
    }

    fn get(s: &TestServer, path: &str, token: Option<&str>) -> common::Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http(s.addr, "GET", path, &headers, b"")
    }

    /// Logs in, retrying while the accounts layer is still starting.
    fn login(s: &TestServer, email: &str, pw: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let r = post_json(
                s,
                "/api/auth/login",
                None,
                &json!({"email": email, "password": pw}),
            );
            if r.status == 200 {
                assert!(!r.text().contains("$argon2"));
                return r.json()["token"].as_str().unwrap().to_string();
            }
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(
                Instant::now() < end,
                "login kept failing: {}\n{}",
                r.text(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn health_store(s: &TestServer) -> String {
        get(s, "/health", None).json()["store"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// One HTTP request from the loopback source address `src`.
    fn post_from(s: &TestServer, src: &str, path: &str, body: &Value) -> common::Response {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
        sock.bind(&from.into()).unwrap();
        sock.connect(&s.addr.into()).unwrap();
        let mut t: std::net::TcpStream = sock.into();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            s.addr,
            body.len()
        );
        t.write_all(req.as_bytes()).unwrap();
        common::read_response(&mut t).expect("a response")
    }

    /// A guesser at 127.0.0.2 is slowed; the owner at 127.0.0.3 logs in at
    /// once (issue 15 item 8).
    #[test]
    fn e2e_a_password_guesser_does_not_lock_the_owner_out() {
        let db = unique_db("e2e_lockout");
        let s = server(&db, &mongo_uri(), &[("LOGIN_RATE_PER_EMAIL", "3")]);
        login(&s, ADMIN_EMAIL, ADMIN_PW);
        let guess = json!({"email": ADMIN_EMAIL, "password": "guess guess guess"});
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(post_from(&s, "127.0.0.2", "/api/auth/login", &guess).status);
        }
        assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
        let right = json!({"email": ADMIN_EMAIL, "password": ADMIN_PW});
        let r = post_from(&s, "127.0.0.3", "/api/auth/login", &right);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["token"].is_string());
        // The guesser itself stays slowed, whatever it sends.
        let r = post_from(&s, "127.0.0.2", "/api/auth/login", &right);
        assert_eq!(r.status, 429, "{}", r.text());
    }

    /// A setup token shorter than 16 characters stops start-up.
    #[test]
    fn e2e_a_short_setup_token_stops_start_up() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("MONGODB_URI", mongo_uri())
            .env("JWT_SECRET", JWT_SECRET)
            .env("INITIAL_SETUP_TOKEN", "ab")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("INITIAL_SETUP_TOKEN"), "{err}");
    }

    #[test]
    fn e2e_routes_over_http() {
        let db = unique_db("e2e_http");
        let s = server(&db, &mongo_uri(), &[("LOGIN_RATE_PER_EMAIL", "3")]);
        let token = login(&s, ADMIN_EMAIL, ADMIN_PW);
        assert_eq!(health_store(&s), "ok");

        let r = get(&s, "/api/auth/me", Some(&token));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        assert_eq!(r.json()["email"], ADMIN_EMAIL);
        assert_eq!(r.json()["profile"]["nickname"], "Admin");

        let r = http(s.addr, "DELETE", "/api/auth/login", &[], b"");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("POST"));
        assert_eq!(r.json()["success"], false);
        let r = get(&s, "/api/auth/nothing-here", None);
        assert_eq!(r.status, 404);
        let r = get(&s, "/api/auth/users", None);
        assert_eq!(r.status, 401);

        // A 400 from an accounts route closes the connection like any other
        // 400: the request pipelined behind it is not answered.
        let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 1\r\n\r\n{GET /health HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        let r = common::read_response(&mut raw).expect("an answer to the login");
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            common::read_response(&mut raw).is_none(),
            "a request after a 400 was answered"
        );

        // Invite and setup through HTTP, query string included.
        let r = post_json(
            &s,
            "/api/auth/invite",
            Some(&token),
            &json!({"email": "web@example.org"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let link = r.json()["setup_link"].as_str().unwrap().to_string();
        let setup = link
            .strip_prefix("/setup-password?token=")
            .unwrap()
            .to_string();
        let r = get(&s, &format!("/api/auth/setup-info?token={setup}"), None);
        assert_eq!(r.json()["email"], "web@example.org", "{}", r.text());
        let r = post_json(
            &s,
            "/api/auth/setup-password",
            None,
            &json!({"token": setup, "password": "web password"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        login(&s, "WEB@example.org", "web password");

        // 429 carries Retry-After.
        let mut last = None;
        for _ in 0..4 {
            last = Some(post_json(
                &s,
                "/api/auth/login",
                None,
                &json!({"email": "web@example.org", "password": "nope nope nope"}),
            ));
        }
        let r = last.unwrap();
        assert_eq!(r.status, 429, "{}", r.text());
        let after: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(after >= 1);
    }

    /// With REQUIRE_AUTH the host role is bound to the account that created
    /// the room (issue 15 item 4): another user holding the secret host id
    /// is refused, the creator and an admin are not.
    #[test]
    fn e2e_require_auth_binds_the_host_role_to_the_creator() {
        let db = unique_db("e2e_host_owner");
        let s = server(&db, &mongo_uri(), &[("REQUIRE_AUTH", "true")]);
        let admin = login(&s, ADMIN_EMAIL, ADMIN_PW);
        for (email, pw) in [
            ("alice@example.org", "alice password"),
            ("bob@example.org", "bob password"),
        ] {
            let r = post_json(
                &s,
                "/api/auth/invite",
                Some(&admin),
                &json!({"email": email, "password": pw}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let alice = login(&s, "alice@example.org", "alice password");
        let bob = login(&s, "bob@example.org", "bob password");
        let r = post_json(&s, "/api/rooms", Some(&alice), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        let code = r.json()["room_code"].as_str().unwrap().to_string();
        let host_id = r.json()["host_id"].as_str().unwrap().to_string();

        // Bob has the secret (say Alice shared a link), not the account.
        let mut b = Client::connect(s.addr);
        b.send(json!({"action": "join", "room_code": code, "peer_id": host_id, "is_host": true, "token": bob}));
        let m = b.recv();
        assert_eq!(m["type"], "error", "{m}");
        assert!(
            m["message"].as_str().unwrap().contains("created the room"),
            "{m}"
        );
        // As a guest Bob is welcome.
        b.send(json!({"action": "join", "room_code": code, "peer_id": "bob", "token": bob}));
        assert_eq!(b.recv_type(), "room_info");
        assert_eq!(b.recv_type(), "connected");

        let mut a = Client::connect(s.addr);
        a.send(json!({"action": "join", "room_code": code, "peer_id": host_id, "is_host": true, "token": alice}));
        assert_eq!(a.recv_type(), "room_info");
        assert_eq!(a.recv_type(), "connected");
        assert_eq!(b.recv_type(), "peer_joined");
        // An admin may take the host role (replacing Alice's connection).
        let mut adm = Client::connect(s.addr);
        adm.send(json!({"action": "join", "room_code": code, "peer_id": host_id, "is_host": true, "token": admin}));
        assert_eq!(adm.recv_type(), "room_info");
        assert_eq!(adm.recv_type(), "connected");
    }

    /// With REQUIRE_AUTH a guest's peer id is bound to its account: another
    /// account cannot replace it, its owner reconnecting can.
    #[test]
    fn e2e_require_auth_binds_guests_to_their_accounts() {
        let db = unique_db("e2e_guest_owner");
        let s = server(&db, &mongo_uri(), &[("REQUIRE_AUTH", "true")]);
        let admin = login(&s, ADMIN_EMAIL, ADMIN_PW);
        for (email, pw) in [
            ("carol@example.org", "carol password"),
            ("dave@example.org", "dave password"),
        ] {
            let r = post_json(
                &s,
                "/api/auth/invite",
                Some(&admin),
                &json!({"email": email, "password": pw}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let carol = login(&s, "carol@example.org", "carol password");
        let dave = login(&s, "dave@example.org", "dave password");
        let r = post_json(
            &s,
            "/api/rooms",
            Some(&carol),
            &json!({"desired_room_code": "GUEST1", "desired_host_id": "gh"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let mut c1 = Client::connect(s.addr);
        c1.send(
            json!({"action": "join", "room_code": "GUEST1", "peer_id": "guest", "token": carol}),
        );
        assert_eq!(c1.recv_type(), "room_info");
        assert_eq!(c1.recv_type(), "connected");
        // Dave under Carol's peer id: refused, Carol stays.
        let mut d = Client::connect(s.addr);
        d.send(json!({"action": "join", "room_code": "GUEST1", "peer_id": "guest", "token": dave}));
        let m = d.recv();
        assert_eq!(m["type"], "error", "{m}");
        assert!(
            m["message"].as_str().unwrap().contains("another account"),
            "{m}"
        );
        assert!(c1.silent_for(Duration::from_millis(300)));
        // Carol reconnecting replaces her own older connection.
        let mut c2 = Client::connect(s.addr);
        c2.send(
            json!({"action": "join", "room_code": "GUEST1", "peer_id": "guest", "token": carol}),
        );
        assert_eq!(c2.recv_type(), "room_info");
        assert_eq!(c2.recv_type(), "connected");
        let m = c1.recv();
        assert_eq!(m["message"], "Replaced by a newer connection", "{m}");
    }

    #[test]
    fn e2e_require_auth_protects_rooms_and_joins() {
        let db = unique_db("e2e_require_auth");
        let s = server(&db, &mongo_uri(), &[("REQUIRE_AUTH", "true")]);
        let token = login(&s, ADMIN_EMAIL, ADMIN_PW);

        // POST /api/rooms.
        let r = post_json(&s, "/api/rooms", None, &json!({}));
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"], "Authentication required");
        let r = post_json(&s, "/api/rooms", Some("not-a-token"), &json!({}));
        assert_eq!(r.status, 401, "{}", r.text());
        let r = post_json(
            &s,
            "/api/rooms",
            Some(&token),
            &json!({"desired_room_code": "AUTH01", "desired_host_id": "host-a"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());

        // WebSocket join: no token → error, not joined.
        let mut anon = Client::connect(s.addr);
        anon.send(json!({"action": "join", "room_code": "AUTH01", "peer_id": "anon"}));
        let m = anon.recv();
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["message"], "Authentication required");
        anon.send(
            json!({"action": "join", "room_code": "AUTH01", "peer_id": "anon", "token": "forged"}),
        );
        let m = anon.recv();
        assert_eq!(m["type"], "error", "{m}");

        // Token in the join message.
        let mut host = Client::connect(s.addr);
        host.send(json!({"action": "join", "room_code": "AUTH01", "peer_id": "host-a", "is_host": true, "token": token}));
        assert_eq!(host.recv_type(), "room_info");
        assert_eq!(host.recv_type(), "connected");
        // Token in the query string of /ws.
        let mut q = Client::connect_path(s.addr, &format!("/ws?token={token}"));
        let info = q.join("AUTH01", "peer-q", false);
        assert_eq!(info["peers"].as_array().unwrap().len(), 2);
        assert_eq!(host.recv_type(), "peer_joined");
        // Token in the Authorization header of the upgrade.
        let mut hdr = {
            use tungstenite::client::IntoClientRequest;
            let stream = std::net::TcpStream::connect(s.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut req = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
            req.headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
            let (ws, _) = tungstenite::client(req, stream).expect("handshake");
            Client { ws }
        };
        hdr.join("AUTH01", "peer-h", false);

        // Logout revokes: new rooms and joins are refused again.
        let r = post_json(&s, "/api/auth/logout", Some(&token), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        let r = post_json(&s, "/api/rooms", Some(&token), &json!({}));
        assert_eq!(r.status, 401, "{}", r.text());
        let mut late = Client::connect(s.addr);
        late.send(
            json!({"action": "join", "room_code": "AUTH01", "peer_id": "late", "token": token}),
        );
        let m = late.recv();
        assert_eq!(m["type"], "error", "{m}");
        // A fresh login works at once.
        let fresh = login(&s, ADMIN_EMAIL, ADMIN_PW);
        let r = post_json(&s, "/api/rooms", Some(&fresh), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
    }

    #[test]
    fn e2e_outage_rooms_keep_working_and_accounts_recover() {
        let mut daemon = Daemon::start();
        let db = unique_db("e2e_outage");
        let uri = daemon.uri();
        let s = server(&db, &uri, &[("REQUIRE_AUTH", "true")]);
        // A token revoked before the outage stays revoked through it.
        let old = login(&s, ADMIN_EMAIL, ADMIN_PW);
        let r = post_json(&s, "/api/auth/logout", Some(&old), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        let token = login(&s, ADMIN_EMAIL, ADMIN_PW);
        assert_eq!(health_store(&s), "ok");
        let r = post_json(
            &s,
            "/api/rooms",
            Some(&token),
            &json!({"desired_room_code": "OUT01", "desired_host_id": "h"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let mut host = Client::connect_path(s.addr, &format!("/ws?token={token}"));
        host.join("OUT01", "h", true);

        daemon.stop();
        let t0 = Instant::now();
        let r = post_json(
            &s,
            "/api/auth/login",
            None,
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PW}),
        );
        let took = t0.elapsed();
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(took < Duration::from_secs(5), "503 took {took:?}");
        let t1 = Instant::now();
        while health_store(&s) != "unavailable" {
            assert!(
                t1.elapsed() < Duration::from_secs(5),
                "/health never said unavailable"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Rooms and WebSockets keep working (a valid token still admits).
        let t2 = Instant::now();
        let r = post_json(&s, "/api/rooms", Some(&token), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t2.elapsed() < Duration::from_secs(2),
            "room creation took {:?} during the outage",
            t2.elapsed()
        );
        // Durable rooms (the room store is this database too): a desired
        // code that is not in memory cannot be checked against the stored
        // rooms now, so it is 503, never a new room over a stored one.
        let t2 = Instant::now();
        let r = post_json(
            &s,
            "/api/rooms",
            Some(&token),
            &json!({"desired_room_code": "OUT02"}),
        );
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "Room store unavailable");
        assert!(t2.elapsed() <= Duration::from_secs(6), "{:?}", t2.elapsed());
        let r = post_json(&s, "/api/rooms", Some(&old), &json!({}));
        assert_eq!(
            r.status,
            401,
            "revoked token during the outage: {}",
            r.text()
        );
        let mut revoked = Client::connect_path(s.addr, &format!("/ws?token={old}"));
        revoked.send(json!({"action": "join", "room_code": "OUT01", "peer_id": "x"}));
        let m = revoked.recv();
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["message"], "Authentication required", "{m}");
        let r = get(&s, "/api/rooms/OUT01", None);
        assert_eq!(r.status, 200);
        let mut peer = Client::connect_path(s.addr, &format!("/ws?token={token}"));
        peer.join("OUT01", "p", false);
        assert_eq!(host.recv_type(), "peer_joined");
        peer.send(json!({"action": "broadcast", "data": "still here"}));
        let m = host.recv();
        assert_eq!(m["data"], "still here", "{m}");

        daemon.restart();
        let fresh = login(&s, ADMIN_EMAIL, ADMIN_PW);
        assert_eq!(get(&s, "/api/auth/me", Some(&fresh)).status, 200);
        let t3 = Instant::now();
        while health_store(&s) != "ok" {
            assert!(
                t3.elapsed() < Duration::from_secs(10),
                "/health never recovered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn e2e_database_that_hangs_gives_503_within_5s() {
        let daemon = Daemon::start();
        let db = unique_db("e2e_hang");
        let s = server(&db, &daemon.uri(), &[]);
        let token = login(&s, ADMIN_EMAIL, ADMIN_PW);

        // Connections stay open but nothing answers: the driver would only
        // notice at its next heartbeat, so the server must stop waiting.
        daemon.freeze();
        for _ in 0..2 {
            let t0 = Instant::now();
            let r = get(&s, "/api/auth/me", Some(&token));
            let took = t0.elapsed();
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(took < Duration::from_secs(5), "503 took {took:?}");
        }
        assert_eq!(health_store(&s), "unavailable");
        // The rest of the server is unaffected meanwhile.
        assert_eq!(get(&s, "/health", None).status, 200);

        daemon.thaw();
        let t1 = Instant::now();
        loop {
            let r = get(&s, "/api/auth/me", Some(&token));
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(t1.elapsed() < Duration::from_secs(30), "no recovery");
            std::thread::sleep(Duration::from_millis(200));
        }
        while health_store(&s) != "ok" {
            assert!(t1.elapsed() < Duration::from_secs(30), "/health stuck");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn e2e_a_burst_of_50_logins_all_get_in() {
        // Latency and memory of this burst are measured outside the tests:
        // tools/memcap.sh runs 50 concurrent logins under a real 100 MiB
        // cgroup and reports the peak RSS; a timed test on a shared 2-core
        // machine would measure the machine.
        let db = unique_db("e2e_burst");
        // Default login limits: successful logins do not count against
        // them, so 50 at once from one address all get in.
        let s = server(&db, &mongo_uri(), &[]);
        login(&s, ADMIN_EMAIL, ADMIN_PW);
        let addr = s.addr;
        let threads: Vec<_> = (0..50)
            .map(|_| {
                std::thread::spawn(move || {
                    let r = http(
                        addr,
                        "POST",
                        "/api/auth/login",
                        &[("Content-Type", "application/json")],
                        json!({"email": ADMIN_EMAIL, "password": ADMIN_PW})
                            .to_string()
                            .as_bytes(),
                    );
                    (r.status, r.json())
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for t in threads {
            let (status, body) = t.join().unwrap();
            *statuses.entry(status).or_insert(0) += 1;
            if status == 200 {
                assert!(body["token"].is_string(), "{body}");
            }
        }
        assert_eq!(
            statuses.get(&200),
            Some(&50),
            "every login in the burst succeeds: {statuses:?}"
        );
        // The server is still itself afterwards.
        let h = http(addr, "GET", "/health", &[], b"");
        assert_eq!(h.status, 200);
    }
}
