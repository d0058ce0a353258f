//! The tracker's web app, as a real browser runs it: headless Chromium
//! loads a page from a second loopback origin, and that page calls the
//! accounts API with `credentials: "include"` and opens room WebSockets.
//! Only a browser enforces CORS, so only this shows that the app's calls
//! can read our answers (and that a disallowed origin's cannot).
//!
//! Needs Debian's `chromium` and the SecantusDB that `tools/test.sh`
//! starts; without either every test here fails saying so.
#![cfg(feature = "accounts")]

mod accounts_support;
mod common;

use accounts_support::{mongo_uri, unique_db, JWT_SECRET, SETUP_TOKEN};
use common::cdp::{serve_page, Browser};
use common::TestServer;
use serde_json::{json, Value};

const PAGE: &str = "<!doctype html><title>tracker</title><p>tracker page</p>";

fn accounts_server(db: &str, extra: &[(&str, &str)]) -> TestServer {
    let uri = mongo_uri();
    let mut env = vec![
        ("MONGODB_URI", uri.as_str()),
        ("DB_NAME", db),
        ("JWT_SECRET", JWT_SECRET),
        ("INITIAL_SETUP_TOKEN", SETUP_TOKEN),
    ];
    env.extend_from_slice(extra);
    TestServer::start(&env)
}

/// The app's fetch wrapper: JSON in and out, the bearer token when it has
/// one, and always `credentials: "include"`.
const CALL_JS: &str = r#"
const call = async (method, path, opts = {}) => {
  const headers = Object.assign({}, opts.headers || {});
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.token) headers['Authorization'] = 'Bearer ' + opts.token;
  const r = await fetch(API + path, {
    method, credentials: 'include', headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  return { status: r.status, body: await r.json() };
};
"#;

fn accounts_flow_js(api: &str) -> String {
    format!(
        r#"(async () => {{
const API = {api};
{CALL_JS}
const out = {{}};
out.invite = await call('POST', '/api/auth/invite', {{
  headers: {{ 'X-Setup-Token': {setup} }},
  body: {{ email: 'owner@example.org', password: 'owner password 1', nickname: 'Owner' }},
}});
out.login = await call('POST', '/api/auth/login', {{
  body: {{ email: 'owner@example.org', password: 'owner password 1' }},
}});
const token = out.login.body.token;
out.me = await call('GET', '/api/auth/me', {{ token }});
out.invite2 = await call('POST', '/api/auth/invite', {{ token, body: {{ email: 'second@example.org' }} }});
const link = out.invite2.body.setup_link || '';
const setup = decodeURIComponent(link.split('token=')[1] || '');
out.setupInfo = await call('GET', '/api/auth/setup-info?token=' + encodeURIComponent(setup));
out.setupPassword = await call('POST', '/api/auth/setup-password', {{
  body: {{ token: setup, password: 'second password 1' }},
}});
out.updateMe = await call('PUT', '/api/auth/me', {{ token, body: {{ position: 'lead' }} }});
out.users = await call('GET', '/api/auth/users', {{ token }});
out.logout = await call('POST', '/api/auth/logout', {{ token }});
out.meAfter = await call('GET', '/api/auth/me', {{ token }});
return out;
}})()"#,
        api = json!(api),
        setup = json!(SETUP_TOKEN),
    )
}

/// A host and a guest in one page: the host creates its room over REST,
/// both join over WebSocket, and the host's document reaches the guest.
fn room_sync_js(api: &str) -> String {
    format!(
        r#"(async () => {{
const API = {api};
const timeout = (p, what) => Promise.race([p, new Promise((_, rej) =>
  setTimeout(() => rej(new Error('timed out waiting for ' + what)), 10000))]);
const r = await fetch(API + '/api/rooms', {{ method: 'POST', credentials: 'include',
  headers: {{ 'Content-Type': 'application/json' }}, body: '{{}}' }});
const room = await r.json();
const open = () => timeout(new Promise((res, rej) => {{
  const w = new WebSocket(room.websocket_url);
  w.onopen = () => res(w); w.onerror = () => rej(new Error('websocket error'));
}}), 'open');
const next = (w, type) => timeout(new Promise(res => {{
  const f = ev => {{ const m = JSON.parse(ev.data);
    if (m.type === type) {{ w.removeEventListener('message', f); res(m); }} }};
  w.addEventListener('message', f);
}}), type);
const host = await open();
let seen = next(host, 'connected');
host.send(JSON.stringify({{ action: 'join', room_code: room.room_code, peer_id: room.host_id, is_host: true }}));
await seen;
const guest = await open();
seen = next(guest, 'connected');
guest.send(JSON.stringify({{ action: 'join', room_code: room.room_code, peer_id: 'guest-1' }}));
await seen;
const doc = next(guest, 'document_sync');
host.send(JSON.stringify({{ action: 'sync_document', document: '{{"tasks":[{{"id":1}}]}}' }}));
const got = await doc;
host.close(); guest.close();
return {{ status: r.status, document: got.document }};
}})()"#,
        api = json!(api),
    )
}

#[test]
fn app_calls_from_another_origin_read_every_answer_under_the_default() {
    let db = unique_db("browser_default");
    let s = accounts_server(&db, &[]);
    let api = format!("http://{}", s.addr);
    let origin = serve_page(PAGE);
    let mut b = Browser::launch();
    let page = b.open(&format!("{origin}/"));

    let out = b.eval(&page, &accounts_flow_js(&api));
    let status = |k: &str| out[k]["status"].as_u64().unwrap_or(0);
    assert_eq!(status("invite"), 200, "{out}");
    assert_eq!(out["invite"]["body"]["activated"], true, "{out}");
    assert_eq!(status("login"), 200, "{out}");
    assert!(out["login"]["body"]["token"].is_string(), "{out}");
    assert_eq!(status("me"), 200, "{out}");
    assert_eq!(out["me"]["body"]["email"], "owner@example.org", "{out}");
    assert_eq!(status("invite2"), 200, "{out}");
    assert_eq!(status("setupInfo"), 200, "{out}");
    assert_eq!(out["setupInfo"]["body"]["email"], "second@example.org");
    assert_eq!(status("setupPassword"), 200, "{out}");
    assert_eq!(status("updateMe"), 200, "{out}");
    assert_eq!(status("users"), 200, "{out}");
    assert_eq!(out["users"]["body"]["users"].as_array().unwrap().len(), 2);
    assert_eq!(status("logout"), 200, "{out}");
    // The page reads the refusal too: a logged-out token is refused.
    assert_eq!(status("meAfter"), 401, "{out}");

    let sync = b.eval(&page, &room_sync_js(&api));
    assert_eq!(sync["status"], 200, "{sync}");
    assert_eq!(sync["document"], r#"{"tasks":[{"id":1}]}"#, "{sync}");
}

#[test]
fn listed_origin_reads_answers_and_an_unlisted_one_is_blocked() {
    let db = unique_db("browser_listed");
    let allowed = serve_page(PAGE);
    let other = serve_page(PAGE);
    let s = accounts_server(&db, &[("CORS_ALLOWED_ORIGINS", &allowed)]);
    let api = format!("http://{}", s.addr);
    let mut b = Browser::launch();

    let page = b.open(&format!("{allowed}/"));
    let out = b.eval(&page, &accounts_flow_js(&api));
    for k in ["invite", "login", "me", "users", "logout"] {
        assert_eq!(out[k]["status"], 200, "{k}: {out}");
    }
    let sync = b.eval(&page, &room_sync_js(&api));
    assert_eq!(sync["document"], r#"{"tasks":[{"id":1}]}"#, "{sync}");

    // The same call from a page of an origin not on the list: the browser
    // hides the answer, so the page's fetch rejects.
    let page = b.open(&format!("{other}/"));
    let blocked: Value = b.eval(
        &page,
        &format!(
            r#"(async () => {{
const API = {api};
{CALL_JS}
try {{
  const r = await call('POST', '/api/auth/login', {{ body: {{ email: 'owner@example.org', password: 'owner password 1' }} }});
  return {{ blocked: false, status: r.status }};
}} catch (e) {{ return {{ blocked: true, error: String(e) }}; }}
}})()"#,
            api = json!(api)
        ),
    );
    assert_eq!(blocked["blocked"], true, "{blocked}");
}
