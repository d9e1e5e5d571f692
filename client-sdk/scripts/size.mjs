// Prints the size of @resonant/client as an app bundles it: minified and gzipped, without its
// peer dependency (yjs), once with its own dependencies (y-websocket, y-indexeddb, y-protocols, lib0) and
// once with only its own code.
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'

const entry = fileURLToPath(new URL('../packages/client/src/index.ts', import.meta.url))

async function size(external) {
  const out = await build({
    entryPoints: [entry],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    external,
    logLevel: 'silent',
  })
  const code = out.outputFiles[0].contents
  return { min: code.length, gzip: gzipSync(code, { level: 9 }).length }
}

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`
const withDeps = await size(['yjs'])
const own = await size(['yjs', 'y-websocket', 'y-indexeddb', 'y-protocols', 'y-protocols/*', 'lib0', 'lib0/*'])
console.log(`@resonant/client, min + gzip, without yjs:            ${kb(withDeps.gzip)} (min ${kb(withDeps.min)})`)
console.log(`@resonant/client, min + gzip, own code only:          ${kb(own.gzip)} (min ${kb(own.min)})`)
