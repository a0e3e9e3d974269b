// Packs the SDK the way `npm publish` would and installs the tarball into
// scratch projects of the toolchains apps really have (issue 14):
//   - ESM on Node: `import` of every entry point;
//   - CommonJS on Node: `require` of every entry point, resolved to dist/cjs
//     (Node 20.0–20.18 cannot require ES modules at all);
//   - TypeScript with `moduleResolution: node10` (no package exports, as with
//     `module: commonjs`, and as Metro before React Native 0.79 resolves) and
//     with `node16`, both under `strict`;
//   - Jest 29 with its default `ts-jest` preset and no transformIgnorePatterns.
// Fails on the first toolchain that cannot use the package as installed.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const modules = join(root, 'node_modules')
const tsc = join(modules, 'typescript/bin/tsc')
const JEST = '29.7.0'
const TS_JEST = '29.4.15'

function step(what) {
  console.log(`\n-- ${what}`)
}
function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 300_000 })
}
function write(dir, files) {
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true })
    writeFileSync(join(dir, name), typeof text === 'string' ? text : `${JSON.stringify(text, null, 2)}\n`)
  }
}
/** A project with the tarball unpacked as npm installs it, and react linked from the SDK's own dev install. */
function project(scratch, name, tarball, files) {
  const dir = join(scratch, name)
  const pkg = join(dir, 'node_modules/herald-realtime')
  mkdirSync(pkg, { recursive: true })
  run('tar', ['-xzf', tarball, '-C', pkg, '--strip-components=1'], dir)
  for (const dep of ['react', '@types/react', 'ws', '@types/ws', '@types/node']) {
    mkdirSync(join(dir, 'node_modules', dep, '..'), { recursive: true })
    symlinkSync(join(modules, dep), join(dir, 'node_modules', dep), 'dir')
  }
  write(dir, files)
  return dir
}

const scratch = mkdtempSync(join(tmpdir(), 'herald-pack-'))
try {
  step('npm pack (prepack builds)')
  // The prepack script's own output precedes the JSON report on stdout.
  const report = run('npm', ['pack', '--pack-destination', scratch, '--json'], root)
  const packed = JSON.parse(report.slice(report.search(/^\[/m)))[0]
  const tarball = join(scratch, packed.filename)
  const shipped = packed.files.map((f) => f.path)
  for (const must of ['dist/index.js', 'dist/cjs/index.js', 'dist/server.d.ts', 'dist/cjs/react-native.d.ts', 'react-native/package.json', 'server/package.json', 'react/package.json', 'testing/package.json']) {
    if (!shipped.includes(must)) throw new Error(`the tarball lacks ${must}: ${shipped.join(', ')}`)
  }
  console.log(`${packed.filename}: ${shipped.length} files, ${packed.size} bytes`)

  step('ESM on Node')
  const esm = project(scratch, 'esm', tarball, {
    'package.json': { name: 'esm-app', private: true, type: 'module' },
    'main.js': `import { RealtimeService, RealtimeClient } from 'herald-realtime'
import { useRealtime } from 'herald-realtime/react'
import { getRealtimeServer, HeraldError } from 'herald-realtime/server'
for (const [name, v] of Object.entries({ RealtimeService, RealtimeClient, useRealtime, getRealtimeServer, HeraldError })) {
  if (typeof v !== 'function') throw new Error(name + ' is not exported')
}
console.log('esm ok', import.meta.resolve('herald-realtime'))
`,
  })
  process.stdout.write(run(process.execPath, ['main.js'], esm))

  step('CommonJS on Node')
  const cjs = project(scratch, 'cjs', tarball, {
    'package.json': { name: 'cjs-app', private: true },
    'main.js': `const { RealtimeService } = require('herald-realtime')
const { useRealtime } = require('herald-realtime/react')
const { getRealtimeServer } = require('herald-realtime/server')
for (const v of [RealtimeService, useRealtime, getRealtimeServer]) if (typeof v !== 'function') throw new Error('missing export')
for (const entry of ['herald-realtime', 'herald-realtime/react', 'herald-realtime/react-native', 'herald-realtime/server', 'herald-realtime/testing']) {
  const file = require.resolve(entry)
  if (!file.includes('/dist/cjs/')) throw new Error(entry + ' resolved to ' + file + ', not the CommonJS build')
}
console.log('cjs ok', require.resolve('herald-realtime'))
`,
  })
  process.stdout.write(run(process.execPath, ['main.js'], cjs))
  // As on Node 20.0–20.18, where require() of an ES module does not exist.
  process.stdout.write(run(process.execPath, ['--no-experimental-require-module', 'main.js'], cjs))

  for (const resolution of ['node10', 'node16', 'nodenext', 'bundler']) {
    step(`TypeScript, moduleResolution ${resolution}, strict`)
    const module = { node10: 'commonjs', node16: 'node16', nodenext: 'nodenext', bundler: 'esnext' }[resolution]
    const dir = project(scratch, `ts-${resolution}`, tarball, {
      'package.json': { name: `ts-${resolution}`, private: true },
      'tsconfig.json': {
        compilerOptions: { module, moduleResolution: resolution, strict: true, noEmit: true, skipLibCheck: true, esModuleInterop: true, jsx: 'react-jsx', types: [], lib: ['ES2022', 'DOM'] },
        include: ['app.ts'],
      },
      'app.ts': `import { RealtimeService, type RealtimeOptions } from 'herald-realtime'
import { useRealtime } from 'herald-realtime/react'
import { MobileRealtimeService } from 'herald-realtime/react-native'
import { getRealtimeServer, type PublishResult } from 'herald-realtime/server'
import NodeWebSocket from 'ws'
const options: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: WebSocket }
export const fromWs: RealtimeOptions = { url: 'ws://localhost:8080/ws', webSocket: NodeWebSocket }
export const service = new RealtimeService(options)
export const mobile: typeof MobileRealtimeService = MobileRealtimeService
export const hook: typeof useRealtime = useRealtime
export const sent: Promise<PublishResult> = getRealtimeServer({ url: 'http://localhost:8080', apiKey: 'k' }).broadcastToChannel('venue:1', {})
`,
    })
    process.stdout.write(run(process.execPath, [tsc, '-p', dir], dir))
    console.log(`ts ${resolution} ok`)
  }

  step('Vite build of a small React app')
  const vite = project(scratch, 'vite', tarball, {
    'package.json': { name: 'vite-app', private: true, type: 'module' },
    'index.html': '<!doctype html><div id="root"></div><script type="module" src="/main.tsx"></script>\n',
    'main.tsx': `import { useRealtime, useVenueUpdates } from 'herald-realtime/react'
export function Venue() {
  const { service, isConnected } = useRealtime('ws://localhost:8080/ws', { token: 't' })
  useVenueUpdates(service, () => {}, '42')
  return isConnected ? 'connected' : 'offline'
}
console.log(Venue)
`,
  })
  for (const dep of ['vite', 'esbuild', 'rollup', '@rollup', 'react-dom', 'scheduler']) {
    if (existsSync(join(modules, dep)) && !existsSync(join(vite, 'node_modules', dep))) {
      symlinkSync(join(modules, dep), join(vite, 'node_modules', dep), 'dir')
    }
  }
  const built = run(process.execPath, [join(modules, 'vite/bin/vite.js'), 'build', '--logLevel', 'warn'], vite)
  process.stdout.write(built)
  if (!existsSync(join(vite, 'dist/index.html'))) throw new Error('vite build wrote no dist/index.html')
  console.log('vite ok')

  step(`Jest ${JEST} with preset ts-jest (no transformIgnorePatterns)`)
  const jest = join(scratch, 'jest')
  write(jest, {
    'package.json': {
      name: 'jest-app',
      private: true,
      devDependencies: { jest: JEST, 'ts-jest': TS_JEST, typescript: '5.9.3', '@types/jest': '29.5.14' },
      jest: { preset: 'ts-jest', testEnvironment: 'node' },
    },
    'tsconfig.json': { compilerOptions: { module: 'commonjs', strict: true, esModuleInterop: true, skipLibCheck: true, types: ['jest'] } },
    'sdk.test.ts': `import { RealtimeClient } from 'herald-realtime'
import { getRealtimeServer } from 'herald-realtime/server'
test('the SDK loads under Jest', async () => {
  expect(typeof RealtimeClient).toBe('function')
  const token = await getRealtimeServer({ url: 'http://localhost:8080', apiKey: 'k', hmacSecret: 's' }).createToken('u1')
  expect(token.split('.')).toHaveLength(3)
})
`,
  })
  run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], jest)
  const pkg = join(jest, 'node_modules/herald-realtime')
  mkdirSync(pkg, { recursive: true })
  run('tar', ['-xzf', tarball, '-C', pkg, '--strip-components=1'], jest)
  execFileSync(process.execPath, [join(jest, 'node_modules/jest/bin/jest.js'), '--ci'], { cwd: jest, stdio: 'inherit', timeout: 300_000 })
  console.log('\npack-check: every toolchain used the packed SDK')
} finally {
  if (existsSync(scratch)) rmSync(scratch, { recursive: true, force: true })
}
