#!/usr/bin/env python3
"""Structural checks of the deployment files, used by tools/check-deploy.sh.

Linters (hadolint, actionlint, systemd-analyze, docker compose) check that a
file is well-formed; these checks pin down what *this project* requires of
it: the HEALTHCHECK uses the binary, the runtime user is not root, the unit
is Type=notify under a 100M cap, the compose file passes every variable of
the protocol's section 4, and so on. Each subcommand prints one line per
finding and exits 1 if there was any.

    python3 tools/deploy_structure.py dockerfile|compose|compose_atlas|workflows|unit|envfile
"""

import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Section 4 of the protocol. If ../shared/spec/protocol.md is present, the list
# is also read from it so that a variable added there is noticed here.
SECTION4 = [
    "HOST", "PORT", "RUST_LOG", "ROOM_IDLE_TIMEOUT_SECONDS", "MONGODB_URI",
    "DB_NAME", "JWT_SECRET", "INITIAL_SETUP_TOKEN", "INITIAL_ADMIN_EMAIL",
    "INITIAL_ADMIN_PASSWORD", "INITIAL_ADMIN_NICKNAME", "MAX_CONNECTIONS",
    "MAX_MESSAGE_BYTES", "MAX_OUTBOUND_BYTES", "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT_SECONDS", "PING_INTERVAL_SECONDS", "ROOM_CREATE_RATE",
    "ROOM_CREATE_BURST", "TRUST_PROXY", "CORS_ALLOWED_ORIGINS",
]
# Read by the server but not part of section 4.
EXTRA_VARS = [
    "MEMORY_LIMIT_BYTES", "REQUIRE_AUTH", "ACCOUNT_WORKERS", "ACCOUNT_QUEUE",
    "LOGIN_RATE_PER_IP", "LOGIN_RATE_PER_EMAIL", "ADMIN_TOKEN", "LOG_FORMAT",
    "ROOM_STORE", "DATA_DIR", "ROOM_SAVE_DELAY_MS", "ROOM_SAVE_MAX_DELAY_MS",
    "REDIS_URL", "NODE_ID", "NODE_TTL_SECONDS",
]

problems = []


def problem(msg):
    problems.append(msg)
    print(f"  FAIL: {msg}")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def section4_vars():
    names = list(SECTION4)
    spec = os.path.join(ROOT, "..", "shared", "spec", "protocol.md")
    if os.path.exists(spec):
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        m = re.search(r"^## 4\..*?(?=^## |\Z)", text, re.S | re.M)
        if m:
            for row in re.findall(r"^\|([^|]+)\|", m.group(0), re.M):
                for n in re.findall(r"`([A-Z][A-Z0-9_]*)`", row):
                    if n not in names:
                        names.append(n)
                # `INITIAL_ADMIN_EMAIL` / `_PASSWORD` shorthand
                base = re.findall(r"`([A-Z][A-Z0-9_]*_)[A-Z]+`", row)
                for suffix in re.findall(r"`(_[A-Z]+)`", row):
                    for b in base:
                        n = b.rstrip("_") + suffix
                        if n not in names:
                            names.append(n)
    return names


def load_yaml(rel):
    import yaml  # installed by check-deploy.sh

    try:
        return yaml.safe_load(read(rel))
    except yaml.YAMLError as e:
        problem(f"{rel}: YAML does not parse: {e}")
        return None


# ---------------------------------------------------------------------------


def check_dockerfile():
    text = read("Dockerfile")
    # Join continuation lines, drop comments.
    logical = []
    cur = ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        logical.append((cur + s).strip())
        cur = ""
    instr = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
             for line in logical]
    froms = [a for i, a in instr if i == "FROM"]
    if len(froms) < 2:
        problem("Dockerfile: expected a multi-stage build (two FROM lines)")
    else:
        if not re.search(r"\brust:", froms[0]):
            problem(f"Dockerfile: build stage should use the official rust image, has {froms[0]!r}")
        final = froms[-1]
        if not ("distroless" in final or "slim" in final):
            problem(f"Dockerfile: runtime stage should be distroless or slim, has {final!r}")
    # Everything after the last FROM is the runtime stage.
    last_from = max(i for i, (k, _) in enumerate(instr) if k == "FROM")
    runtime = instr[last_from:]
    users = [a.strip() for k, a in runtime if k == "USER"]
    if not users:
        problem("Dockerfile: runtime stage has no USER (would run as root)")
    elif users[-1].split(":")[0] in ("root", "0"):
        problem(f"Dockerfile: runtime USER is root ({users[-1]})")
    exposes = " ".join(a for k, a in runtime if k == "EXPOSE").split()
    if "3001" not in [e.split("/")[0] for e in exposes]:
        problem("Dockerfile: runtime stage does not EXPOSE 3001")
    hcs = [a for k, a in runtime if k == "HEALTHCHECK"]
    if not hcs:
        problem("Dockerfile: no HEALTHCHECK")
    else:
        hc = hcs[-1]
        m = re.search(r"\bCMD\s+(\[.*\])", hc)
        if not m:
            problem("Dockerfile: HEALTHCHECK must use the exec form (no shell in distroless)")
        elif "sync-server" not in m.group(1) or "healthcheck" not in m.group(1):
            problem("Dockerfile: HEALTHCHECK should run `sync-server healthcheck`")
    labels = " ".join(a for k, a in instr if k == "LABEL")
    if "org.opencontainers.image.source" not in labels:
        problem("Dockerfile: no org.opencontainers.image.source label")
    # Dependency-caching layer: manifests copied and built before the sources.
    copies = [(n, a) for n, (k, a) in enumerate(instr) if k == "COPY" and "--from" not in a]
    cargo_toml_at = next((n for n, a in copies if "Cargo.toml" in a), None)
    src_at = next((n for n, a in copies if re.search(r"(^|\s)src\b", a)), None)
    builds = [n for n, (k, a) in enumerate(instr) if k == "RUN" and "cargo build" in a]
    if cargo_toml_at is None or src_at is None or not builds:
        problem("Dockerfile: expected COPY Cargo.toml, COPY src and RUN cargo build")
    elif not any(cargo_toml_at < b < src_at for b in builds):
        problem("Dockerfile: no dependency layer (cargo build between copying the manifests and the sources)")
    # Every COPY source from the context must exist and not be .dockerignored.
    ignore = read(".dockerignore").splitlines() if os.path.exists(os.path.join(ROOT, ".dockerignore")) else []
    if not ignore:
        problem(".dockerignore is missing or empty")
    for _, a in copies:
        parts = [p for p in a.split() if not p.startswith("--")]
        for src in parts[:-1]:
            if not os.path.exists(os.path.join(ROOT, src)):
                problem(f"Dockerfile: COPY source {src!r} does not exist")
            elif dockerignored(src, ignore):
                problem(f"Dockerfile: COPY source {src!r} is excluded by .dockerignore")
    if ".git" not in " ".join(ignore) and "*" not in [i.strip() for i in ignore]:
        problem(".dockerignore should keep .git and target/ out of the context")


def dockerignored(path, patterns):
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    import fnmatch

    path = path.rstrip("/")
    excluded = False
    for raw in patterns:
        p = raw.strip()
        if not p or p.startswith("#"):
            continue
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(pref, p) for pref in prefixes):
            excluded = not neg
    return excluded


# ---------------------------------------------------------------------------


def check_compose():
    doc = load_yaml("docker-compose.yml")
    if not isinstance(doc, dict):
        problem("docker-compose.yml: not a mapping")
        return
    services = doc.get("services") or {}
    server = services.get("sync-server")
    mongo = services.get("mongo")
    if not server:
        problem("docker-compose.yml: no sync-server service")
        return
    if not mongo:
        problem("docker-compose.yml: no mongo service")
    else:
        if not str(mongo.get("image", "")).startswith("mongo:7"):
            problem(f"docker-compose.yml: mongo image should be mongo:7, is {mongo.get('image')!r}")
        vols = mongo.get("volumes") or []
        if not any(str(v).split(":")[0] in (doc.get("volumes") or {}) for v in vols):
            problem("docker-compose.yml: mongo data is not on a named volume")
    env = server.get("environment") or {}
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [""])[:2] for e in env)
    for name in section4_vars():
        if name not in env:
            problem(f"docker-compose.yml: sync-server environment lacks {name}")
    if "mongo" not in str(env.get("MONGODB_URI", "")):
        problem("docker-compose.yml: MONGODB_URI should point at the mongo service")
    for secret in ("JWT_SECRET", "INITIAL_ADMIN_PASSWORD"):
        v = str(env.get(secret, ""))
        if not re.fullmatch(r"\$\{" + secret + r":?\?[^}]*\}", v):
            problem(f"docker-compose.yml: {secret} must come from the environment/.env with no default (${{{secret}:?...}})")
    mem = str(server.get("mem_limit", "")).lower()
    if mem not in ("100m", "100mb", "104857600"):
        problem(f"docker-compose.yml: sync-server mem_limit should be 100m, is {mem!r}")
    hc = server.get("healthcheck") or {}
    if "healthcheck" not in " ".join(map(str, hc.get("test") or [])):
        problem("docker-compose.yml: sync-server healthcheck should run `sync-server healthcheck`")
    # Durable rooms: the store lives on a named volume (the root file
    # system is read-only).
    if str(env.get("DATA_DIR", "")) != "/data":
        problem("docker-compose.yml: sync-server DATA_DIR should be /data")
    svols = server.get("volumes") or []
    if not any(str(v).split(":")[0] in (doc.get("volumes") or {}) and str(v).split(":")[1:2] == ["/data"]
               for v in svols):
        problem("docker-compose.yml: sync-server /data is not on a named volume")
    dep = server.get("depends_on") or {}
    if isinstance(dep, dict) and dep.get("mongo", {}).get("condition") != "service_healthy":
        problem("docker-compose.yml: sync-server should wait for mongo to be healthy")


def check_compose_atlas():
    """The external-database variant: the same server service, no database
    container, the URI and the image required from .env."""
    rel = "docker-compose.atlas.yml"
    doc = load_yaml(rel)
    if not isinstance(doc, dict):
        problem(f"{rel}: not a mapping")
        return
    services = doc.get("services") or {}
    server = services.get("sync-server")
    if not server:
        problem(f"{rel}: no sync-server service")
        return
    others = sorted(set(services) - {"sync-server"})
    if others:
        problem(f"{rel}: only the server runs here (the database is external), found {others}")
    if doc.get("volumes"):
        problem(f"{rel}: no volumes are needed without a database container")
    if server.get("depends_on"):
        problem(f"{rel}: sync-server must not depend on a local service")
    env = server.get("environment") or {}
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [""])[:2] for e in env)
    for name in section4_vars():
        if name not in env:
            problem(f"{rel}: sync-server environment lacks {name}")
    for secret in ("MONGODB_URI", "JWT_SECRET", "INITIAL_ADMIN_PASSWORD"):
        v = str(env.get(secret, ""))
        if not re.fullmatch(r"\$\{" + secret + r":?\?[^}]*\}", v):
            problem(f"{rel}: {secret} must come from the environment/.env with no default (${{{secret}:?...}})")
    if not re.fullmatch(r"\$\{SYNC_SERVER_IMAGE:?\?[^}]*\}", str(server.get("image", ""))):
        problem(f"{rel}: the image must be the published one, from SYNC_SERVER_IMAGE with no default")
    if "build" in server:
        problem(f"{rel}: runs the published image; building belongs to docker-compose.yml")
    mem = str(server.get("mem_limit", "")).lower()
    if mem not in ("100m", "100mb", "104857600"):
        problem(f"{rel}: sync-server mem_limit should be 100m, is {mem!r}")
    hc = server.get("healthcheck") or {}
    if "healthcheck" not in " ".join(map(str, hc.get("test") or [])):
        problem(f"{rel}: sync-server healthcheck should run `sync-server healthcheck`")
    if server.get("read_only") is not True or "ALL" not in (server.get("cap_drop") or []):
        problem(f"{rel}: sync-server should run read-only with every capability dropped")


# ---------------------------------------------------------------------------


def triggers(doc):
    # PyYAML reads the bare key `on` as boolean True.
    return doc.get("on", doc.get(True))


def steps_of(doc):
    for job in (doc.get("jobs") or {}).values():
        for step in job.get("steps") or []:
            yield job, step


def check_workflows():
    base = ".github/workflows"
    files = sorted(f for f in os.listdir(os.path.join(ROOT, base)) if f.endswith((".yml", ".yaml")))
    docs = {}
    for f in files:
        doc = load_yaml(f"{base}/{f}")
        if not isinstance(doc, dict):
            continue
        docs[f] = doc
        if not triggers(doc):
            problem(f"{f}: no `on:` triggers")
        jobs = doc.get("jobs")
        if not isinstance(jobs, dict) or not jobs:
            problem(f"{f}: no jobs")
            continue
        for name, job in jobs.items():
            if "runs-on" not in job:
                problem(f"{f}: job {name} has no runs-on")
            for step in job.get("steps") or []:
                if not ("uses" in step) ^ ("run" in step):
                    problem(f"{f}: job {name} has a step with neither or both of uses/run")
    c = docs.get("container.yml")
    if c is None:
        problem("container.yml: missing")
    else:
        on = triggers(c) or {}
        branches = ((on.get("push") or {}) if isinstance(on, dict) else {}).get("branches") or []
        if "main" not in branches:
            problem("container.yml: should run on push to main")
        perms = c.get("permissions") or {}
        if perms.get("packages") != "write":
            problem("container.yml: needs permissions packages: write")
        pushes = [s for _, s in steps_of(c)
                  if str(s.get("uses", "")).startswith("docker/build-push-action")
                  and str((s.get("with") or {}).get("push", "")).lower() == "true"]
        if not pushes:
            problem("container.yml: no docker/build-push-action step that pushes")
        for s in pushes:
            plats = str((s.get("with") or {}).get("platforms", ""))
            if "linux/amd64" not in plats or "linux/arm64" not in plats:
                problem(f"container.yml: push should cover linux/amd64 and linux/arm64, has {plats!r}")
        text = read(f"{base}/container.yml")
        if "ghcr.io/${{ github.repository }}" not in text:
            problem("container.yml: image should be ghcr.io/${{ github.repository }}")
        if "type=raw,value=latest" not in text or "type=sha" not in text:
            problem("container.yml: tags should be latest and the commit SHA")
        if not any(str(s.get("uses", "")).startswith("docker/setup-qemu-action") for _, s in steps_of(c)):
            problem("container.yml: arm64 needs docker/setup-qemu-action")
    t = docs.get("test.yml")
    if t is None:
        problem("test.yml: missing")
    else:
        on = triggers(t) or {}
        if "pull_request" not in (on if isinstance(on, (dict, list)) else [on]):
            problem("test.yml: should run on pull_request")
        if not any("tools/test.sh" in str(s.get("run", "")) for _, s in steps_of(t)):
            problem("test.yml: should run tools/test.sh")


# ---------------------------------------------------------------------------


def unit_keys(text):
    keys = {}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        if "=" not in s:
            problem(f"unit: line outside key=value: {s!r}")
            continue
        k, v = s.split("=", 1)
        keys.setdefault((section, k.strip()), []).append(v.strip())
    return keys


def check_unit():
    rel = "systemd/khun-phaen-sync.service"
    keys = unit_keys(read(rel))

    def val(k, section="Service"):
        v = keys.get((section, k))
        return v[-1] if v else None

    exact = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "MemoryMax": "100M",
        "EnvironmentFile": "/etc/khun-phaen-sync/env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
    }
    for k, want in exact.items():
        got = val(k)
        if got != want:
            problem(f"{rel}: {k}={want} expected, found {got!r}")
    if not (val("ExecStart") or "").startswith("/usr/local/bin/sync-server"):
        problem(f"{rel}: ExecStart should be /usr/local/bin/sync-server")
    if not val("WatchdogSec"):
        problem(f"{rel}: WatchdogSec missing (the server pings the watchdog)")
    nofile = val("LimitNOFILE") or "0"
    if not nofile.split(":")[0].isdigit() or int(nofile.split(":")[0]) <= 10000:
        problem(f"{rel}: LimitNOFILE must exceed MAX_CONNECTIONS (10000), is {nofile!r}")
    if val("DynamicUser") != "yes" and (val("User") in (None, "root", "0")):
        problem(f"{rel}: must run as a dedicated unprivileged user (DynamicUser=yes or User=)")
    families = set((val("RestrictAddressFamilies") or "").split())
    if families != {"AF_INET", "AF_INET6", "AF_UNIX"}:
        problem(f"{rel}: RestrictAddressFamilies should be AF_INET AF_INET6 AF_UNIX, is {sorted(families)}")
    if "@system-service" not in " ".join(keys.get(("Service", "SystemCallFilter"), [])):
        problem(f"{rel}: SystemCallFilter=@system-service missing")
    if not val("StateDirectory"):
        problem(f"{rel}: StateDirectory= missing (the room store's DATA_DIR)")
    elif not any(f"DATA_DIR=/var/lib/{val('StateDirectory')}" in e
                 for e in keys.get(("Service", "Environment"), [])):
        problem(f"{rel}: Environment=DATA_DIR=/var/lib/<StateDirectory> missing")
    if val("WantedBy", "Install") != "multi-user.target":
        problem(f"{rel}: [Install] WantedBy=multi-user.target missing")


def check_envfile():
    rel = "systemd/sync-server.env.example"
    known = set(section4_vars()) | set(EXTRA_VARS)
    seen = set()
    for n, line in enumerate(read(rel).splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        commented = s.startswith("#")
        body = s.lstrip("#").strip()
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", body)
        if not m:
            if not commented:
                problem(f"{rel}:{n}: not KEY=value: {s!r}")
            continue
        k, v = m.groups()
        if k not in known:
            problem(f"{rel}:{n}: {k} is not a variable the server reads")
        seen.add(k)
        if not commented:
            try:
                shlex.split(v)
            except ValueError as e:
                problem(f"{rel}:{n}: value does not parse: {e}")
            if k in ("JWT_SECRET", "INITIAL_ADMIN_PASSWORD", "INITIAL_SETUP_TOKEN", "ADMIN_TOKEN") and v:
                problem(f"{rel}:{n}: the example must not carry a secret value for {k}")
    for k in section4_vars():
        if k not in seen:
            problem(f"{rel}: does not mention {k}")


CHECKS = {
    "dockerfile": check_dockerfile,
    "compose": check_compose,
    "compose_atlas": check_compose_atlas,
    "workflows": check_workflows,
    "unit": check_unit,
    "envfile": check_envfile,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(CHECKS)}")
    CHECKS[sys.argv[1]]()
    sys.exit(1 if problems else 0)
