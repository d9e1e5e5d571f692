import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

export default defineConfig({
  resolve: {
    // The packages' sources, as the demo builds them (no dist/ needed to test).
    alias: {
      '@resonant/client': fileURLToPath(new URL('./packages/client/src/index.ts', import.meta.url)),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    testTimeout: 60000,
    hookTimeout: 60000,
    // Each file starts its own server; two cores do not gain from running them side by side.
    fileParallelism: false,
  },
})
