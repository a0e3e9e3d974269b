// Reports the SDK's size as an app would ship it: each entry point bundled,
// minified and gzipped, with react / react-native left external.
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const entries = { 'herald-client': 'src/index.ts', 'herald-client/react': 'src/react.ts', 'herald-client/react-native': 'src/react-native.tsx' }
for (const [name, entry] of Object.entries(entries)) {
  const r = await build({
    entryPoints: [root + entry],
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['es2020'],
    write: false,
    jsx: 'automatic',
    external: ['react', 'react/jsx-runtime', 'react-native'],
    logLevel: 'silent',
  })
  const code = r.outputFiles[0].contents
  console.log(`${name.padEnd(28)} ${String(code.length).padStart(7)} B minified  ${String(gzipSync(code, { level: 9 }).length).padStart(6)} B min+gzip`)
}
