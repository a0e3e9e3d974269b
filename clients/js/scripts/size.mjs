// Reports the SDK's size as an app would ship it: each entry point (and the
// core classes alone) bundled, minified and gzipped, with react and
// react-native left external.
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const entries = {
  'RealtimeClient only': `export { RealtimeClient } from './src/client.ts'`,
  'RealtimeService only': `export { RealtimeService } from './src/service.ts'`,
  'herald-realtime': `export * from './src/index.ts'`,
  'herald-realtime/react': `export * from './src/react.ts'`,
  'herald-realtime/react-native': `export * from './src/react-native.tsx'`,
  'herald-realtime/server': `export * from './src/server.ts'`,
}
for (const [name, contents] of Object.entries(entries)) {
  const r = await build({
    stdin: { contents, resolveDir: root, loader: 'ts' },
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
  const gz = gzipSync(code, { level: 9 }).length
  console.log(`${name.padEnd(28)} ${String(code.length).padStart(7)} B minified  ${String(gz).padStart(6)} B min+gzip`)
}
