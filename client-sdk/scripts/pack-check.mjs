// Packs @resonant/client and @resonant/react as npm would publish them and installs the
// tarballs into an empty project that has React and Yjs but not React Flow, then loads them in
// Node: the packages must build on `npm pack` (prepack), ship their dist, carry no JSON import
// attribute, and `@resonant/react/hooks` must load without the optional `@xyflow/react` peer.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const tmp = mkdtempSync(path.join(os.tmpdir(), 'resonant-pack-'))
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
const fail = (msg) => {
  console.error(`pack-check: ${msg}`)
  process.exit(1)
}

try {
  run('npm', ['pack', '-w', '@resonant/client', '-w', '@resonant/react', '--pack-destination', tmp, '--silent'], root)
  const tarballs = readdirSync(tmp).filter((f) => f.endsWith('.tgz'))
  if (tarballs.length !== 2) fail(`expected 2 tarballs, got ${tarballs.join(', ')}`)

  const app = path.join(tmp, 'app')
  run('mkdir', ['-p', app])
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
  const versions = (pkg) => JSON.parse(readFileSync(path.join(root, 'packages/react/package.json'), 'utf8')).devDependencies[pkg]
  run(
    'npm',
    ['install', '--no-audit', '--no-fund', '--prefer-offline', '--legacy-peer-deps', ...tarballs.map((t) => path.join(tmp, t)), `react@${versions('react')}`, `yjs@${versions('yjs')}`],
    app,
  )

  for (const pkg of ['client', 'react']) {
    const dist = path.join(app, 'node_modules/@resonant', pkg, 'dist')
    for (const f of readdirSync(dist).filter((f) => f.endsWith('.js'))) {
      if (/\bwith\s*\{\s*type\s*:/.test(readFileSync(path.join(dist, f), 'utf8'))) fail(`${pkg}/dist/${f} has an import attribute`)
    }
  }

  const probe = `
    const client = await import('@resonant/client')
    if (typeof client.RestClient !== 'function' || !client.blockSchema.types.ai) throw new Error('client exports')
    const hooks = await import('@resonant/react/hooks')
    if (typeof hooks.useRoom !== 'function' || typeof hooks.ResonantProvider !== 'function') throw new Error('hooks exports')
    if ('useFlow' in hooks) throw new Error('the hooks entry must not carry the React Flow binding')
    const full = await import('@resonant/react').then(() => 'loaded', (e) => e.code)
    if (full !== 'ERR_MODULE_NOT_FOUND') throw new Error('@resonant/react without @xyflow/react: ' + full)
    console.log('pack-check: tarballs install and load; @resonant/react/hooks works without @xyflow/react')
  `
  process.stdout.write(run('node', ['--input-type=module', '-e', probe], app))
} finally {
  rmSync(tmp, { recursive: true, force: true })
}
