//! The `/admin` inspector in a real browser: Debian's headless Chromium
//! (driven over the DevTools protocol by `common::cdp`) loads the page from
//! the server under its own Content-Security-Policy, signs in, and watches
//! a room come, change and be inspected, while test clients join and leave.
//! A wrong credential is refused, and the page logs no error: the CSP lets
//! every script and style the page needs, and blocks an inline script.
//!
//! Needs Debian's `chromium` (tools/test.sh installs it); the accounts
//! variant also needs the SecantusDB that tools/test.sh starts. Without
//! them these tests fail saying so, never skip.

mod common;

use common::cdp::{Browser, Page};
use common::TestServer;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "browser-admin-token-0123456789abcdef";

/// Polls `expr` in the page until it is `true`.
fn wait_for(b: &mut Browser, page: &Page, what: &str, expr: &str) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if b.eval(page, expr) == json!(true) {
            return;
        }
        assert!(
            Instant::now() < end,
            "page never showed {what}; body: {}",
            b.eval(page, "document.body.innerText")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The members cell of the room's row, or null.
fn members_of(code: &str) -> String {
    format!(
        r#"(() => {{ const r = document.querySelector('#rooms tr[data-code={code}]');
             return r ? r.querySelector('td.members').textContent : null; }})()"#,
        code = json!(code)
    )
}

fn sign_in_with_token(b: &mut Browser, page: &Page, token: &str) {
    wait_for(
        b,
        page,
        "the sign-in form",
        "!document.getElementById('login').hidden",
    );
    assert_eq!(
        b.eval(page, "document.getElementById('account-fields').hidden"),
        json!(true),
        "token mode shows no email/password"
    );
    b.eval(
        page,
        &format!(
            "document.getElementById('token').value = {}; document.getElementById('login-button').click(); true",
            json!(token)
        ),
    );
}

/// Keeps the screenshot in the target directory (and at
/// `ADMIN_SCREENSHOT` when set, e.g. for the README's `docs/admin.png`).
fn save_screenshot(png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("admin.png"), png).unwrap();
    if let Ok(path) = std::env::var("ADMIN_SCREENSHOT") {
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}

#[test]
fn inspector_in_headless_chromium_with_admin_token() {
    let s = TestServer::start(&[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let mut b = Browser::launch();
    let page = b.open(&format!("http://{}/admin", s.addr));
    assert_eq!(b.eval(&page, "document.body.dataset.mode"), json!("token"));

    sign_in_with_token(&mut b, &page, ADMIN_TOKEN);
    wait_for(
        &mut b,
        &page,
        "the inspector",
        "!document.getElementById('inspector').hidden && document.getElementById('node-connections') !== null",
    );
    assert_eq!(
        b.eval(&page, "document.getElementById('login-error').textContent"),
        json!("")
    );

    // A room appears when test clients join it.
    s.room("BROWSE", "browse-host");
    let mut host = s.ws();
    host.join("BROWSE", "browse-host", true);
    let mut guest = s.ws();
    guest.join("BROWSE", "guest-1", false);
    host.send(json!({"action": "sync_document", "document": "x".repeat(2048)}));
    assert_eq!(guest.recv_type(), "document_sync");
    let two = format!("{} === '2'", members_of("BROWSE"));
    wait_for(&mut b, &page, "the room with 2 members", &two);

    // Its members on click.
    b.eval(
        &page,
        "document.querySelector('#rooms tr[data-code=\"BROWSE\"]').click(); true",
    );
    wait_for(
        &mut b,
        &page,
        "the members panel",
        "!document.getElementById('members-panel').hidden && document.querySelectorAll('#members tbody tr').length === 2",
    );

    b.set_viewport(&page, 1100, 640);
    wait_for(
        &mut b,
        &page,
        "the wide layout",
        "document.querySelectorAll('#members tbody tr').length === 2",
    );
    save_screenshot(&b.screenshot(&page));

    // The member count follows a leave.
    guest.send(json!({"action": "leave"}));
    guest.expect_close();
    drop(guest);
    let one = format!("{} === '1'", members_of("BROWSE"));
    wait_for(&mut b, &page, "the room with 1 member", &one);
    wait_for(
        &mut b,
        &page,
        "one member listed",
        "document.querySelectorAll('#members tbody tr').length === 1",
    );
    let text = b.eval(&page, "document.body.innerText");
    let text = text.as_str().unwrap();
    assert!(
        text.contains("BROWSE") && text.contains("present"),
        "{text}"
    );

    // Nothing the page did broke its own CSP or threw.
    let errors = b.errors(&page);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The CSP is in force: an inline script is refused, and reported.
    b.eval(
        &page,
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.body.appendChild(s); true",
    );
    assert_eq!(b.eval(&page, "window.inlineRan === true"), json!(false));
    let end = Instant::now() + Duration::from_secs(5);
    while !b
        .errors(&page)
        .iter()
        .any(|e| e.contains("Content Security Policy"))
    {
        assert!(
            Instant::now() < end,
            "no CSP report: {:#?}",
            b.errors(&page)
        );
        b.eval(&page, "0");
    }

    // A wrong token, in a fresh tab (its session storage is empty), is
    // refused and shows nothing of the node.
    let other = b.open(&format!("http://{}/admin", s.addr));
    let wrong = ADMIN_TOKEN.replace('0', "9");
    sign_in_with_token(&mut b, &other, &wrong);
    wait_for(
        &mut b,
        &other,
        "the refusal",
        "document.getElementById('login-error').textContent.length > 0",
    );
    assert_eq!(
        b.eval(&other, "document.getElementById('inspector').hidden"),
        json!(true)
    );
    assert_eq!(
        b.eval(
            &other,
            "document.querySelectorAll('#rooms tbody tr').length"
        ),
        json!(0)
    );
    // The only error is the browser's note of the refused request.
    for e in b.errors(&other) {
        assert!(e.contains("401"), "unexpected error: {e}");
    }
    drop(host);
}

#[cfg(feature = "accounts")]
mod accounts_support;

#[cfg(feature = "accounts")]
#[test]
fn inspector_signs_in_with_an_admin_account() {
    use accounts_support::{mongo_uri, unique_db, JWT_SECRET};
    let uri = mongo_uri();
    let db = unique_db("admin_browser");
    let s = TestServer::start(&[
        ("MONGODB_URI", uri.as_str()),
        ("DB_NAME", db.as_str()),
        ("JWT_SECRET", JWT_SECRET),
        ("INITIAL_ADMIN_EMAIL", "boss@example.org"),
        ("INITIAL_ADMIN_PASSWORD", "boss password 1"),
    ]);
    // The bootstrap admin exists once /readyz says the database is ready.
    let end = Instant::now() + Duration::from_secs(30);
    while common::http(s.addr, "GET", "/readyz", &[], b"").status != 200 {
        assert!(Instant::now() < end, "accounts never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut b = Browser::launch();
    let page = b.open(&format!("http://{}/admin", s.addr));
    assert_eq!(
        b.eval(&page, "document.body.dataset.mode"),
        json!("accounts")
    );
    wait_for(
        &mut b,
        &page,
        "the sign-in form",
        "!document.getElementById('login').hidden",
    );
    assert_eq!(
        b.eval(&page, "document.getElementById('token-fields').hidden"),
        json!(true)
    );
    let fill = |email: &str, pw: &str| -> String {
        format!(
            "document.getElementById('email').value = {}; document.getElementById('password').value = {}; document.getElementById('login-button').click(); true",
            json!(email),
            json!(pw)
        )
    };
    // A wrong password first: refused by /api/auth/login.
    b.eval(&page, &fill("boss@example.org", "not the password"));
    wait_for(
        &mut b,
        &page,
        "the refusal",
        "document.getElementById('login-error').textContent.includes('Invalid email or password')",
    );
    // Then the real one.
    b.eval(&page, &fill("boss@example.org", "boss password 1"));
    wait_for(
        &mut b,
        &page,
        "the inspector",
        "!document.getElementById('inspector').hidden && document.getElementById('node-accounts') !== null",
    );
    assert_eq!(
        b.eval(
            &page,
            "document.getElementById('node-accounts').textContent"
        ),
        json!("ok")
    );
    s.room("ACCT", "acct-host");
    let mut host = s.ws();
    host.join("ACCT", "acct-host", true);
    let one = format!("{} === '1'", members_of("ACCT"));
    wait_for(&mut b, &page, "the room", &one);
    let errors: Vec<String> = b
        .errors(&page)
        .into_iter()
        .filter(|e| !e.contains("401"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let _: Value = b.eval(&page, "0");
}
