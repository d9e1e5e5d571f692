#!/usr/bin/env bash
# Three `resonant` nodes on this machine behind a small round-robin TCP proxy: a cluster to
# try by hand (docs/scale-out.md §14). Needs Postgres and Redis; every node gets the same
# flags, as production nodes must.
#
#   DATABASE_URL=postgres://127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 scripts/cluster.sh
#
# Open http://127.0.0.1:8080/ in two browsers: each connection lands on the next node, and
# the editors see each other as on one server. Ctrl-C stops everything.
set -euo pipefail
: "${DATABASE_URL:?a postgres:// URL (cluster mode needs Postgres)}"
: "${REDIS_URL:?a redis:// URL}"
BIN="${RESONANT_BIN:-${CARGO_TARGET_DIR:-target}/release/resonant}"
[ -x "$BIN" ] || { echo "build it first: cargo build --release (or set RESONANT_BIN)" >&2; exit 1; }
PROXY_PORT="${PROXY_PORT:-8080}"
PORTS=(1241 1242 1243)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
for p in "${PORTS[@]}"; do
  "$BIN" serve --port "$p" --node-name "n$p" --database-url "$DATABASE_URL" \
    --redis-url "$REDIS_URL" --redis-prefix "${REDIS_PREFIX:-resonant-demo}" "$@" &
  PIDS+=($!)
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
  echo "node :$p $(curl -s "http://127.0.0.1:$p/readyz" | tr '\n' ' ')"
done
# Round-robin, no stickiness: each TCP connection (an HTTP request or a WebSocket) goes to
# the next node, as a plain load balancer would send it.
python3 - "$PROXY_PORT" "${PORTS[@]}" <<'PY' &
import asyncio, itertools, sys
listen, ports = int(sys.argv[1]), itertools.cycle(int(p) for p in sys.argv[2:])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()
async def handle(cr, cw):
    try:
        sr, sw = await asyncio.open_connection("127.0.0.1", next(ports))
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, sw), pipe(sr, cw), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
echo "proxy :$PROXY_PORT → ${PORTS[*]} (round-robin); Ctrl-C stops"
wait
