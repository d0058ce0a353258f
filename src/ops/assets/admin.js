// The sync server's inspector. Served from the binary; talks only to this
// origin. Every value from the server is written with textContent, never as
// HTML. The credential lives in sessionStorage (gone with the tab).
"use strict";

(function () {
  const mode = document.body.dataset.mode; // "accounts" or "token"
  const KEY = "sync-admin-bearer";
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let selected = null;

  function bearer() { return sessionStorage.getItem(KEY); }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function bytes(n) {
    if (n == null) return "–";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
      m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }

  function ago(iso) {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 60 ? s + " s ago" : s < 3600 ? Math.floor(s / 60) + " min ago"
      : new Date(iso).toLocaleString();
  }

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + bearer() },
      cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    return { status: r.status, body };
  }

  function showLogin(message) {
    stop();
    sessionStorage.removeItem(KEY);
    $("inspector").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("account-fields").hidden = mode !== "accounts";
    $("token-fields").hidden = mode === "accounts";
    $("login-error").textContent = message || "";
  }

  function refusal(status, body) {
    if (status === 429) return "Too many failed attempts; wait a minute and try again.";
    if (status === 403) return "This account is not an admin.";
    if (body && body.error) return body.error;
    return "Refused (" + status + ").";
  }

  function renderNode(n) {
    const dl = $("node");
    dl.replaceChildren();
    const rows = [
      ["Version", n.version],
      ["Uptime", duration(n.uptime_seconds)],
      ["Connections", n.connections],
      ["WebSockets", n.websockets],
      ["Rooms", n.rooms],
      ["Memory (RSS)", bytes(n.rss_bytes) + (n.memory_limit_bytes ? " of " + bytes(n.memory_limit_bytes) : " (no limit)")],
      ["Memory guard", n.memory_guard],
      ["Accounts", n.accounts],
      ["Room store", n.store && n.store.kind === "memory" ? "memory only"
        : n.store ? n.store.kind + ", " + n.store.status + " (" + n.store.unsaved_rooms + " unsaved)"
        : "–"],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      dd.id = "node-" + k.toLowerCase().replace(/[^a-z]+/g, "-").replace(/-$/, "");
      if (v === "engaged" || String(v).includes("unavailable")) dd.className = "bad";
      dl.append(dt, dd);
    }
  }

  function renderRooms(data) {
    const tbody = $("rooms").tBodies[0];
    tbody.replaceChildren();
    for (const r of data.rooms) {
      const tr = document.createElement("tr");
      tr.className = "room" + (r.code === selected ? " selected" : "");
      tr.dataset.code = r.code;
      cell(tr, r.code, "code");
      cell(tr, String(r.members), "num members");
      cell(tr, r.host_present ? "present" : "absent", r.host_present ? "ok" : "");
      cell(tr, r.document_bytes ? bytes(r.document_bytes) : "none", "num");
      cell(tr, ago(r.last_activity));
      tbody.appendChild(tr);
    }
    $("room-total").textContent = "(" + data.total_rooms +
      (data.truncated ? ", most recent " + data.rooms.length + " shown" : "") + ")";
  }

  async function showMembers(code) {
    const { status, body } = await api("/api/admin/rooms/" + encodeURIComponent(code));
    const panel = $("members-panel");
    if (status === 401) return showLogin("Your session has ended; sign in again.");
    if (status !== 200) { panel.hidden = true; selected = null; return; }
    $("members-code").textContent = body.code;
    const tbody = $("members").tBodies[0];
    tbody.replaceChildren();
    for (const p of body.peers) {
      const tr = document.createElement("tr");
      cell(tr, p.id);
      cell(tr, p.is_host ? "yes" : "");
      cell(tr, ago(p.joined_at));
      tbody.appendChild(tr);
    }
    panel.hidden = false;
  }

  async function refresh() {
    let res;
    try {
      res = await api("/api/admin/rooms");
    } catch (e) {
      $("status").textContent = "Server unreachable; retrying.";
      return;
    }
    if (res.status === 401 || res.status === 403 || res.status === 429) {
      return showLogin(refusal(res.status, res.body));
    }
    if (res.status !== 200) {
      $("status").textContent = "Refresh failed (" + res.status + ").";
      return;
    }
    $("status").textContent = "Updated " + new Date().toLocaleTimeString();
    renderNode(res.body.node);
    renderRooms(res.body);
    if (selected) await showMembers(selected);
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  async function start() {
    $("login").hidden = true;
    $("inspector").hidden = false;
    $("sign-out").hidden = false;
    await refresh();
    stop();
    timer = setInterval(refresh, 1000);
  }

  async function signIn(ev) {
    ev.preventDefault();
    $("login-error").textContent = "";
    let token;
    if (mode === "accounts") {
      let r;
      try {
        r = await fetch("/api/auth/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ email: $("email").value, password: $("password").value }),
        });
      } catch (e) {
        $("login-error").textContent = "Server unreachable.";
        return;
      }
      const body = await r.json().catch(() => null);
      if (r.status !== 200 || !body || !body.token) {
        $("login-error").textContent = refusal(r.status, body);
        return;
      }
      token = body.token;
    } else {
      token = $("token").value.trim();
    }
    sessionStorage.setItem(KEY, token);
    const check = await api("/api/admin/rooms");
    if (check.status !== 200) return showLogin(refusal(check.status, check.body));
    $("password").value = "";
    $("token").value = "";
    await start();
  }

  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => showLogin(""));
  $("rooms").tBodies[0].addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr.room");
    if (!tr) return;
    selected = tr.dataset.code;
    for (const row of tr.parentNode.children) row.classList.toggle("selected", row === tr);
    showMembers(selected);
  });

  if (bearer()) start(); else showLogin("");
})();
