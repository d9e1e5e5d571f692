import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    testTimeout: 60000,
    hookTimeout: 60000,
    // Each file starts its own server; two cores do not gain from running them side by side.
    fileParallelism: false,
  },
})
