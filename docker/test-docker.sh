#!/usr/bin/env bash
# `make test-docker`: the Docker path end to end. Builds the image, starts docker/docker-compose.yml
# (Label Studio on PostgreSQL, the backend's web service, its job worker, Redis) with docker/compose.host.yml (host
# network: all traffic on loopback; Label Studio :18080, backend :19090, Redis :16379), runs
# tests/docker_e2e.py against it and always tears the stack down (`down -v`), also on failure.
#
# On a machine that reaches no image registry, ../shared/tools/docker-local.sh (run when present)
# installs Docker and builds stand-in base images; the Redis and PostgreSQL stand-ins are built here
# from docker/redis-standin/ and docker/postgres-standin/ when missing. Elsewhere Docker must be installed and compose pulls the real
# images. Compose: `docker compose` (the plugin), else `docker-compose`, else Debian's docker-compose
# (v1.29) is installed. Needs root, sudo or the docker group.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DOCKER_LOCAL=${DOCKER_LOCAL:-../shared/tools/docker-local.sh}
PROJECT=${COMPOSE_PROJECT:-isal-e2e}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
T0=$(date +%s)
lap() { echo "[test-docker] $(( $(date +%s) - T0 )) s  $*"; }

standins=false
if [ -f "$DOCKER_LOCAL" ]; then
  $SUDO bash "$DOCKER_LOCAL"
  standins=true
  lap "docker-local.sh: Docker and the stand-in base images are ready"
fi
docker info >/dev/null 2>&1 || { echo "test-docker: Docker is not usable here (install it, or start dockerd)" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  if ! command -v docker-compose >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  fi
  COMPOSE=(docker-compose)
fi
lap "compose: $("${COMPOSE[@]}" version 2>/dev/null | head -1)"

if $standins && ! docker image inspect redis:7.4-alpine >/dev/null 2>&1; then
  docker build -q --network host -t redis:7.4-alpine docker/redis-standin >/dev/null
  lap "built the Redis stand-in (Debian's redis-server) as redis:7.4-alpine"
fi
if $standins && ! docker image inspect postgres:15 >/dev/null 2>&1; then
  docker build -q --network host -t postgres:15 docker/postgres-standin >/dev/null
  lap "built the PostgreSQL stand-in (Debian's postgresql-15) as postgres:15"
fi

export LABEL_STUDIO_API_KEY=${LABEL_STUDIO_API_KEY:-$($PY -c 'import secrets; print(secrets.token_hex(20))')}

# The stack: docker-compose.yml + compose.host.yml, merged by compose itself, less the published
# `ports:` of the services on the host network (compose v1 refuses them there; v2 ignores them).
STACK_DIR=$(mktemp -d)
STACK=$STACK_DIR/compose.yml
(umask 077; "${COMPOSE[@]}" -f docker/docker-compose.yml -f docker/compose.host.yml config | "$PY" -c '
import sys, yaml
stack = yaml.safe_load(sys.stdin)
for service in stack["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
yaml.safe_dump(stack, sys.stdout, sort_keys=False)' >"$STACK")
C=("${COMPOSE[@]}" -p "$PROJECT" -f "$STACK")

teardown() {
  rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    "${C[@]}" ps || true
    "${C[@]}" logs --no-color --tail 60 || true
  fi
  "${C[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$STACK_DIR"
  lap "torn down (exit $rc)"
  exit "$rc"
}
"${C[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # what a killed run left
trap teardown EXIT INT TERM

"${C[@]}" build
size=$(docker image inspect -f '{{.Size}}' isal-backend:latest)
lap "built isal-backend:latest: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }') ($size bytes)"

# The image holds requirements.txt alone (no dev packages): the project page's forecast (scipy.stats) must run
# there, as every module the product imports must (tests/test_dependencies.py checks the declarations).
docker run --rm --network host --entrypoint python isal-backend:latest -c \
  "from isal_core.forecast import forecast; print(forecast([40, 80, 120, 160], [0.5, 0.6, 0.66, 0.7], 0.9))"
lap "the forecast runs in the image"

"${C[@]}" up -d
lap "stack up"
COMPOSE="${C[*]}" LABEL_STUDIO_URL=http://127.0.0.1:18080 BACKEND_URL=http://127.0.0.1:19090 \
  REDIS_URL=redis://127.0.0.1:16379/0 "$PY" tests/docker_e2e.py
lap "tests/docker_e2e.py passed"
