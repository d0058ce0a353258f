//! A real headless Chromium for browser tests, driven over the Chrome
//! DevTools Protocol (a JSON-RPC over WebSocket) with the blocking
//! tungstenite client the other tests use.
//!
//! Node does not enforce CORS, CSP or mixed-origin rules; a browser does, so
//! what a page may read of our answers is only known by asking one. The
//! browser is Debian's `chromium` (`CHROMIUM_BIN` overrides the path), which
//! `tools/test.sh` installs on a fresh machine; without it these tests fail
//! with a message saying so, never skip.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// One headless Chromium process with a fresh profile; killed on drop.
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    profile: PathBuf,
    /// Events that arrived while waiting for a reply, oldest first.
    events: Vec<Value>,
}

/// A tab attached with its own DevTools session.
pub struct Page {
    session: String,
}

impl Browser {
    pub fn launch() -> Browser {
        let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} not found: the browser tests need Debian's chromium (tools/test.sh installs it)"
        );
        let profile = std::env::temp_dir().join(format!(
            "sync-cdp-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        // The flags keep the browser off the network: this machine's closed
        // network refuses its background connections.
        let child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        // Chromium names its DevTools port and path in this file once it
        // listens.
        let port_file = profile.join("DevToolsActivePort");
        let end = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(p), Some(path)) = (lines.next(), lines.next()) {
                    break (p.trim().to_string(), path.trim().to_string());
                }
            }
            assert!(
                Instant::now() < end,
                "chromium did not open DevTools in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) =
            tungstenite::client(format!("ws://{addr}{path}"), stream).expect("DevTools handshake");
        Browser {
            child,
            ws,
            next_id: 0,
            profile,
            events: Vec::new(),
        }
    }

    /// One DevTools command; returns its `result`, panics on its `error`.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = match self.ws.read().expect("DevTools connection") {
                Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
                _ => continue,
            };
            if m["id"] == json!(id) {
                if let Some(e) = m.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Opens `url` in a new tab and waits for its load event.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let page = Page {
            session: attached["sessionId"].as_str().unwrap().to_string(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&page.session), domain, json!({}));
        }
        self.call(Some(&page.session), "Page.navigate", json!({"url": url}));
        self.wait_event(&page, "Page.loadEventFired", Duration::from_secs(20));
        page
    }

    fn wait_event(&mut self, page: &Page, method: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let seen = self
                .events
                .iter()
                .any(|e| e["method"] == json!(method) && e["sessionId"] == json!(page.session));
            if seen {
                return;
            }
            assert!(Instant::now() < end, "no {method} within {limit:?}");
            // A cheap round trip lets pending events arrive.
            self.call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": "0"}),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Evaluates `expr` in the page, awaiting it if it is a promise, and
    /// returns its value as JSON. A thrown exception panics with its text.
    pub fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Error-level messages the page logged (console and browser log),
    /// CSP violations and blocked requests among them.
    pub fn errors(&self, page: &Page) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["sessionId"] == json!(page.session))
            .filter_map(|e| match e["method"].as_str()? {
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"]["text"].as_str()?.to_string())
                }
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(e["params"]["args"].to_string())
                }
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                _ => None,
            })
            .collect()
    }

    /// Resizes the page's viewport (CSS pixels), e.g. before a screenshot.
    pub fn set_viewport(&mut self, page: &Page, width: u32, height: u32) {
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// A PNG of the page as it is now.
    pub fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        let r = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .expect("base64 screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Serves `html` to every GET on a fresh loopback port: a second origin
/// for the pages that call the server. Returns the page's origin
/// (`http://127.0.0.1:<port>`).
pub fn serve_page(html: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            // Read the request head up to its blank line.
            while r.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    format!("http://{addr}")
}
