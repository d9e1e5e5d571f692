// The wire protocol's constants, from the client SDK's protocol.ts (which tests/protocol_ts.rs
// checks against the server's Rust types), so these tests and the SDK cannot drift apart.
// Node 20 cannot import TypeScript, and the SDK is built only later in .ci/run, so the file is
// compiled here, in memory, with TypeScript's single-file transpiler: no build step, no copy.

import { readFileSync } from 'node:fs'
import ts from 'typescript'

const source = readFileSync(new URL('../../client-sdk/packages/client/src/protocol.ts', import.meta.url), 'utf8')
const { outputText } = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  fileName: 'protocol.ts'
})
const protocol = await import(`data:text/javascript;base64,${Buffer.from(outputText).toString('base64')}`)

/** A constant of protocol.ts; one it no longer exports fails here, not as undefined in a comparison. */
function named (name) {
  if (protocol[name] === undefined) throw new Error(`client-sdk/packages/client/src/protocol.ts exports no ${name}`)
  return protocol[name]
}

export const MSG_SYNC = named('MSG_SYNC')
export const MSG_AWARENESS = named('MSG_AWARENESS')
export const MSG_AUTH = named('MSG_AUTH')
export const MSG_QUERY_AWARENESS = named('MSG_QUERY_AWARENESS')
export const MSG_STATELESS = named('MSG_STATELESS')
export const MSG_SYNC_STATUS = named('MSG_SYNC_STATUS')
export const SYNC_STEP1 = named('SYNC_STEP1')
export const SYNC_STEP2 = named('SYNC_STEP2')
export const SYNC_UPDATE = named('SYNC_UPDATE')
export const MAX_STATELESS_BYTES = named('MAX_STATELESS_BYTES')
export const MAX_BROADCAST_BYTES = named('MAX_BROADCAST_BYTES')
export const MAX_RESUME = named('MAX_RESUME')
export const MAX_DECISION_COMMENT_CHARS = named('MAX_DECISION_COMMENT_CHARS')
export const CLOSE = named('CLOSE')
