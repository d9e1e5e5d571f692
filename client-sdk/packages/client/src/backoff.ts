/** Reconnect timing: jittered exponential backoff with a floor (the server's retry hints). */

/** The first reconnect waits 250–500 ms; each failure after that doubles it, up to the cap. */
export const BACKOFF_BASE_MS = 500

/**
 * Least wait after an attempt that failed before the upgrade, or a 1013 without a hint. A
 * browser reports the server's 503 + Retry-After (join rate, connection cap) only as a close
 * 1006 before opening; the server books refused joins about a second apart, so come back no
 * sooner than that, plus up to a second of jitter so the refused do not return together.
 */
export const BUSY_FLOOR_MS = 1000

/**
 * How long to wait before the next attempt after `failures` consecutive failed connections.
 * "Equal jitter": between half and all of `min(max, base·2^(failures-1))`, so a refused crowd
 * spreads out and no one hammers the server; then at least `floorMs` plus up to
 * `min(floorMs, 1 s)` of jitter.
 */
export function backoffDelay(failures: number, floorMs: number, maxMs: number, random: () => number = Math.random): number {
  let wait = 0
  if (failures > 0) {
    const base = Math.min(maxMs, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 16))
    wait = base / 2 + (random() * base) / 2
  }
  if (floorMs > 0) wait = Math.max(wait, floorMs + random() * Math.min(floorMs, 1000))
  return Math.round(wait)
}

/**
 * The server's retry hint in a close reason (`retry in 250 ms`, `retry in 2 s`), for the codes
 * that carry one (4429 rate limited, 1013 try again later), in milliseconds (at most 120 s).
 */
export function retryHint(code: number, reason: string): number | null {
  if (code !== 4429 && code !== 1013) return null
  const m = /retry in (\d+(?:\.\d+)?)\s*(ms|s)\b/i.exec(reason)
  if (!m) return null
  const n = Number(m[1])
  return Math.min(m[2]!.toLowerCase() === 's' ? n * 1000 : n, 120000)
}
