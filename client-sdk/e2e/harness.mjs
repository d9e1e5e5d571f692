// Starts the real server (a fresh data dir, a free port) and Debian's Chromium for a browser test.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const here = path.dirname(fileURLToPath(import.meta.url))

export function resonantBin() {
  const c = [process.env.RESONANT_BIN, process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug/resonant'), path.resolve(here, '../../target/debug/resonant')].filter(Boolean)
  const found = c.find((p) => existsSync(p))
  if (!found) throw new Error(`resonant binary not found (tried ${c.join(', ')})`)
  return found
}

export function chromiumPath() {
  const c = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].filter(Boolean)
  const found = c.find((p) => existsSync(p))
  if (!found) throw new Error('Chromium not found: apt-get install chromium (or set CHROMIUM_PATH)')
  return found
}

/** A port free right now (the OS's pick), for a server that must know its own URL before it listens. */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/**
 * `{ base, browser, stop }`: the server at `base` and a launched browser; `stop()` ends both.
 * `publicUrl`: the server is told its address (`--public-url`), so the links it makes (webhook
 * triggers' URLs) reach it; it then listens on a port picked beforehand instead of its own pick.
 */
export async function startServerAndBrowser({ serverArgs = [], publicUrl = false } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'resonant-e2e-'))
  const fixed = publicUrl ? await freePort() : 0
  const portArgs = ['--port', String(fixed), ...(publicUrl ? ['--public-url', `http://127.0.0.1:${fixed}`] : [])]
  const server = spawn(resonantBin(), ['serve', ...portArgs, '--data-dir', dir, ...serverArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RESONANT_LOG: 'warn' },
  })
  const port = await new Promise((resolve, reject) => {
    readline.createInterface({ input: server.stdout }).on('line', (l) => {
      const m = /^resonant listening on 127\.0\.0\.1:(\d+)$/.exec(l)
      if (m) resolve(Number(m[1]))
    })
    server.once('exit', (code) => reject(new Error(`server exited ${code}`)))
  })
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  return {
    base: `http://127.0.0.1:${port}`,
    browser,
    async stop() {
      await browser.close().catch(() => {})
      server.kill('SIGTERM')
    },
  }
}
