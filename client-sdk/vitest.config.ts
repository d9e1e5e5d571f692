import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

export default defineConfig({
  resolve: {
    // The React package's tests run against the client's sources, like the demo, not a build.
    alias: { '@resonant/client': fileURLToPath(new URL('./packages/client/src/index.ts', import.meta.url)) },
  },
  test: {
    include: ['packages/*/test/**/*.test.{ts,tsx}'],
    testTimeout: 60000,
    hookTimeout: 60000,
    // Each file starts its own server; two cores do not gain from running them side by side.
    fileParallelism: false,
  },
})
