#!/usr/bin/env bash
# The compose stack, run for real as a user would (issue 13). Not part of scripts/test.sh.
#
#   sudo bash scripts/compose_check.sh            # PYTHON=... picks the client's interpreter
#
# Installs docker.io and docker-compose (Debian packages) when missing, starts dockerd (vfs
# storage, no bridge: every container uses the host's network, all traffic on 127.0.0.1) if none
# runs and stops only the one it started, builds a Debian bookworm base image once with
# debootstrap (cached as longctx-base:bookworm; the host's CA bundle goes in, for a TLS proxy),
# copies the machine's CPU torch wheel into docker/wheels, builds the image, runs the sandbox's
# escape tests inside it, starts Redis (6399, AOF on a volume), the API (8113), the CPU worker
# and two CPU model workers, then uploads, asks, chats through the openai client, kills a model
# worker mid-job, restarts Redis, checks both model workers, stops everything and prints a table.
# Takes long: 1790 s on a fresh 2-core machine (build 1164 s of it, vfs); see docs/service.md.
# The compose files are rendered into one (render(): Compose 1.29 cannot drop `ports` under host
# networking), kept in $CACHE for inspection.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
CACHE=${LONGCTX_COMPOSE_CACHE:-/var/cache/longctx-compose}
BASE=longctx-base:bookworm
export COMPOSE_PROJECT_NAME=longctx-check
# vfs copies the whole 2 GB image for each container it creates: four at once under load took
# longer than Compose's default 60 s API read timeout (a rerun's `up` failed so, 2026-12-03)
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}
# the users' files with the check's overlay on top, rendered once into one file (see render())
FILES=(-f docker-compose.yml -f docker-compose.cpu.yml -f docker-compose.check.yml)
RENDERED=$CACHE/compose.check.rendered.yml
COMPOSE=(docker-compose -f "$RENDERED")
export LONGCTX_CHECK_URL=http://127.0.0.1:8113 LONGCTX_CHECK_STATE=$(mktemp)
[ -x .venv/bin/python ] && PYTHON=${PYTHON:-.venv/bin/python}  # the client needs httpx, redis, openai
PYTHON=${PYTHON:-python3}
STEPS=() RESULTS=() NOTES=() STARTED_DOCKERD="" UP=""
mkdir -p "$CACHE"

record() { STEPS+=("$1"); RESULTS+=("$2"); NOTES+=("${3:-}"); echo "== $1: $2 ${3:-}"; }
step() { local name=$1; shift; echo; echo "-- $name"; if "$@"; then record "$name" PASS "${NOTE:-}"; else record "$name" FAIL "${NOTE:-}"; fi; NOTE=""; }
client() { "$PYTHON" docker/check_client.py "$@"; }
cid() { "${COMPOSE[@]}" ps -q "$1"; }

cleanup() {
  [ -n "$UP" ] && "${COMPOSE[@]}" down --volumes >/dev/null 2>&1
  if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
  rm -f "$LONGCTX_CHECK_STATE"
}
trap cleanup EXIT

engine() {
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io docker-compose debootstrap || return 1
  fi
  NOTE="$(dockerd --version | cut -d, -f1); $(docker-compose version --short)"
}

daemon() {
  if docker info >/dev/null 2>&1; then NOTE="already running"; return 0; fi
  dockerd --storage-driver=vfs --iptables=false --bridge=none >"$CACHE/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && { NOTE="started (pid $STARTED_DOCKERD)"; return 0; }; sleep 1; done
  return 1
}

# Compose 1.29 merges `ports` lists across files and an override cannot remove them, but a host-
# networked container must have none ("host network_mode is incompatible with port_bindings").
# So the three files are rendered with `config` and the `ports` of every host-networked service
# dropped (host networking publishes nothing: the API listens on 127.0.0.1:8113 directly); the
# stack runs from that one file. docker-compose.yml stays as users have it.
render() {
  docker-compose "${FILES[@]}" config >"$RENDERED.tmp" || return 1
  NOTE=$(/usr/bin/python3 - "$RENDERED.tmp" <<'EOF'
import sys, yaml
with open(sys.argv[1]) as f:
    spec = yaml.safe_load(f)
dropped = [name for name, svc in spec["services"].items()
           if svc.get("network_mode") == "host" and svc.pop("ports", None) is not None]
assert all(svc.get("network_mode") == "host" for svc in spec["services"].values()
           if "gpu" not in svc.get("profiles", [])), "a service of the check is not host-networked"
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(spec, f, sort_keys=False)
print("ports dropped for:", ", ".join(dropped) or "none")
EOF
  ) || return 1
  mv "$RENDERED.tmp" "$RENDERED" && NOTE="$NOTE; $RENDERED"
}

base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then NOTE="cached"; return 0; fi
  local root="$CACHE/rootfs"
  [ -x "$root/usr/bin/python3" ] || debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,bubblewrap,redis-server,libgomp1 \
    bookworm "$root" http://deb.debian.org/debian || return 1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null && NOTE="built"
}

build() {
  ls docker/wheels/torch-*.whl >/dev/null 2>&1 || pip download torch==2.13.0 --no-deps -d docker/wheels -q
  local t=$(date +%s)
  "${COMPOSE[@]}" build api || return 1
  DOCKER_BUILDKIT=0 docker build -q --network host -f docker/test.Dockerfile -t longctx:sandbox-test tests >/dev/null || return 1
  SIZE=$(docker image inspect longctx:cpu --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')
  NOTE="$(( $(date +%s) - t )) s; image longctx:cpu $SIZE"
}

image() {
  docker run --rm --network none longctx:cpu python3 -c '
import os, shutil
from model_core.paths import default_model_path
from retrieval.embeddings import default_embedder_path
m = default_model_path()
print("uid", os.getuid(), "| model", m, m.stat().st_size // 2**20, "MiB | embedder", default_embedder_path())
print("pip:", shutil.which("pip"), "gcc:", shutil.which("gcc"), "bwrap:", shutil.which("bwrap"))
assert os.getuid() == 1000 and not shutil.which("pip") and not shutil.which("gcc")'
}

sandbox() {
  local out; out=$(docker run --rm --network host longctx:sandbox-test python3 -m pytest -q -s -p no:cacheprovider -rs tests/agent/test_sandbox.py 2>&1)
  local rc=$?; echo "$out" | grep -E "isolation here|passed|failed|SKIPPED|Error" | head -20
  NOTE=$(echo "$out" | grep -o "sandbox isolation here: [a-z]*" | head -1)
  return $rc
}

up() {
  local t=$(date +%s.%N)
  UP=1  # set before: a half-done up (some containers created) is taken down too
  "${COMPOSE[@]}" up -d redis api worker-cpu worker-model-1 worker-model-2 || return 1
  client ready 900 || return 1
  COLD=$(echo "$(date +%s.%N) - $t" | bc | xargs printf "%.1f s")
  NOTE="cold start (up -> /readyz 200) $COLD"
}

healthy() {
  for _ in $(seq 60); do
    local states; states=$(for s in redis api worker-cpu worker-model-1 worker-model-2; do
      echo "$s=$(docker inspect -f '{{.State.Health.Status}}' "$(cid $s)")"; done)
    echo "$states" | grep -vq "=healthy" || { echo "$states" | tr '\n' ' '; echo; return 0; }
    sleep 5
  done
  echo "$states"; return 1
}

kill_mid_job() {
  local line; line=$(client long-job) || return 1
  local job=${line% *} worker=${line#* }; local service=${worker%-*}
  echo "job $job running on $worker: docker kill $service"
  docker kill "$(cid "$service")" >/dev/null || return 1
  client after-kill "$job" 240; local rc=$?
  "${COMPOSE[@]}" start "$service" >/dev/null
  for _ in $(seq 120); do
    curl -fsS "$LONGCTX_CHECK_URL/readyz" | grep -q "\"$service-" && { echo "$service back"; return $rc; }; sleep 2
  done
  return 1
}

redis_restart() {
  docker exec "$(cid redis)" redis-cli -p 6399 info persistence | grep -E "aof_enabled|aof_last_write_status" | tr -d '\r'
  local job; job=$(client submit) || return 1
  echo "accepted $job; docker-compose restart redis"
  "${COMPOSE[@]}" restart redis >/dev/null || return 1
  client survived "$job"
}

down() { "${COMPOSE[@]}" down --volumes && UP=""; }

step "engine and compose installed" engine
step "dockerd" daemon
step "compose config rendered (no ports under host networking)" render
step "base image ($BASE)" base
step "docker-compose build" build
step "image: uid 1000, model + embedder inside, no pip/gcc" image
step "sandbox escape tests in the container" sandbox
step "up -d and /readyz" up
step "health checks healthy" healthy
step "upload a document" client upload
step "POST /v1/qa cites the document" client qa
step "chat completion (openai client)" client chat
step "docker kill a model worker mid-job" kill_mid_job
step "restart Redis: accepted jobs survive" redis_restart
step "both model workers take jobs, same documents" client two-workers
step "down" down

echo; printf '%-55s %-5s %s\n' STEP RESULT NOTE
for i in "${!STEPS[@]}"; do printf '%-55s %-5s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}" "${NOTES[$i]}"; done
echo "image longctx:cpu: ${SIZE:-?}; cold start: ${COLD:-?}; the check took $(( $(date +%s) - START )) s"
! printf '%s\n' "${RESULTS[@]}" | grep -q FAIL
