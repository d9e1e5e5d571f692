// Writes `NAME.br` and `NAME.gz` next to every file of the built demo (`node precompress.mjs
// DIR`) that compresses to less than 90% of its size, for the server to send to browsers
// that accept them (src/http/demo.rs). Compressed here, once per build, rather than in the
// server's build.rs: brotli at quality 11 over half a megabyte takes seconds, which a
// build script (compiled without optimisation) would add to every server build that touches
// the demo, and the committed bytes are what CI's "dist equals a fresh build" check compares,
// so the output must be deterministic: fixed parameters, and node's gzip header carries no
// name and a zero mtime.
import { brotliCompressSync, constants, gzipSync } from 'node:zlib'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const MIN_BYTES = 1024

function files(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((name) => {
      const path = join(dir, name)
      return statSync(path).isDirectory() ? files(path) : [path]
    })
}

const dir = process.argv[2]
if (!dir) throw new Error('usage: node precompress.mjs DIR')
for (const path of files(dir)) {
  if (path.endsWith('.br') || path.endsWith('.gz')) continue
  const data = readFileSync(path)
  if (data.length < MIN_BYTES) continue
  const br = brotliCompressSync(data, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
      [constants.BROTLI_PARAM_SIZE_HINT]: data.length,
    },
  })
  const gz = gzipSync(data, { level: 9 })
  for (const [ext, out] of [['.br', br], ['.gz', gz]]) {
    if (out.length < data.length * 0.9) writeFileSync(path + ext, out)
  }
  console.log(`${path}: ${data.length} B, br ${br.length} B, gzip ${gz.length} B`)
}
