#!/usr/bin/env bash
# Start a local Redis on 127.0.0.1:${REDIS_PORT:-6379} unless one already answers.
set -euo pipefail
port=${REDIS_PORT:-6379}
ping() { python3 - "$port" <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
ping && exit 0
if ! command -v redis-server >/dev/null; then
  echo "redis-server not found; installing it from the system's packages" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "Redis did not start on port $port" >&2
exit 1
