//! Issue 15 ("Hardening") over real sockets: the host role as a secret
//! capability (rule 11), and the bounds against hostile clients (rule 12).

mod common;

use common::{http, TestServer};
use serde_json::json;
use std::time::Duration;

/// A stranger who knows only a room's code cannot learn the host's id nor
/// take the host role; the creator, using only its own POST answer (as the
/// tracker client does), keeps working.
#[test]
fn the_host_id_is_a_secret_only_the_creator_holds() {
    let s = TestServer::start(&[]);
    let created = http(s.addr, "POST", "/api/rooms", &[], b"").json();
    let code = created["room_code"].as_str().unwrap().to_string();
    let secret = created["host_id"].as_str().unwrap().to_string();

    // The lookup shows a public id, never the secret.
    let r = http(s.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
    assert!(!r.text().contains(&secret), "{}", r.text());
    let public = r.json()["host_id"].as_str().unwrap().to_string();
    assert!(public.starts_with("host_") && public != secret);

    // Re-creating the code without the secret is 409 and reveals nothing.
    for body in [
        json!({"desired_room_code": code}),
        json!({"desired_room_code": code, "desired_host_id": public}),
    ] {
        let r = http(
            s.addr,
            "POST",
            "/api/rooms",
            &[],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(!r.text().contains(&secret));
    }

    // The creator joins as host with the id from its own answer.
    let mut host = s.ws();
    host.send(json!({"action":"join","room_code":code,"peer_id":secret,"is_host":true}));
    let info = host.recv();
    assert_eq!(info["host_id"], public);
    assert_eq!(info["peers"][0]["id"], public);
    assert_eq!(info["peers"][0]["is_host"], true);
    let connected = host.recv();
    assert_eq!(connected["peer_id"], secret, "the host may see its own id");

    // The stranger can neither be host under the public id nor join as it.
    let mut stranger = s.ws();
    for is_host in [true, false] {
        stranger.send(json!({"action":"join","room_code":code,"peer_id":public,"is_host":is_host}));
        assert_eq!(stranger.recv_type(), "error");
    }
    assert!(host.silent_for(Duration::from_millis(200)));

    // A guest sees the host only under the public id, everywhere.
    let mut guest = s.ws();
    let info = guest.join(&code, "guest", false);
    assert!(!info.to_string().contains(&secret), "{info}");
    assert_eq!(host.recv()["type"], "peer_joined");
    host.send(json!({"action":"broadcast","data":"hello"}));
    let data = guest.recv();
    assert_eq!(data, json!({"type":"data","from":public,"data":"hello"}));
    let r = http(s.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
    assert!(!r.text().contains(&secret), "{}", r.text());
    host.send(json!({"action":"leave"}));
    let left = guest.recv();
    assert_eq!(left, json!({"type":"peer_left","peer_id":public}));

    // The creator restores its room with its secret.
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[],
        json!({"desired_room_code": code, "desired_host_id": secret})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restored"], true);
    assert_eq!(r.json()["host_id"], secret);
}
