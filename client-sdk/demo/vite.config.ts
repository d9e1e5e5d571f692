import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

/** The Resonant server the dev and preview servers proxy `/api` and `/sync` to. */
const server = process.env.RESONANT_URL ?? 'http://127.0.0.1:1234'
const proxy = {
  '/api': { target: server, changeOrigin: true },
  '/sync': { target: server, changeOrigin: true, ws: true },
}

export default defineConfig({
  base: '/',
  plugins: [react()],
  resolve: {
    // One copy of Yjs, whatever the packages' own node_modules hold: two break it silently.
    dedupe: ['yjs'],
    alias: {
      '@resonant/client': fileURLToPath(new URL('../packages/client/src/index.ts', import.meta.url)),
      '@resonant/react': fileURLToPath(new URL('../packages/react/src/index.ts', import.meta.url)),
    },
  },
  server: { proxy },
  preview: { proxy },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
})
