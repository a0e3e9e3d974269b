// Packs the SDK the way `npm publish` would and installs the tarball into
// scratch projects of the toolchains apps really have (issue 14):
//   - ESM on Node: `import` of every entry point;
//   - CommonJS on Node: `require` of every entry point, resolved to dist/cjs
//     (Node 20.0–20.18 cannot require ES modules at all);
//   - TypeScript with `moduleResolution: node10` (no package exports, as with
//     `module: commonjs`, and as Metro before React Native 0.79 resolves) and
//     with `node16`, both under `strict`;
//   - Jest 29 with its default `ts-jest` preset and no transformIgnorePatterns;
//   - Metro (React Native's bundler) with package exports on and off
//     (scripts/metro-check.mjs).
// Before those, it checks that the package points only at files it ships:
// every exports / main / types target, every relative import in dist/, and
// every file or document that a d.ts or a comment in dist/ names.
// Fails on the first toolchain that cannot use the package as installed.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import { metroCheck } from './metro-check.mjs'

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

/**
 * What in the unpacked package at `dir` names a file the tarball lacks:
 * exports, main/module/types (of the package and of each stub folder),
 * relative imports in dist/, and, in every d.ts and in the JS files'
 * comments, file paths (`x/y.ext`, `./…`), documents (`*.md`) and spec
 * section references (`SPEC`, `§`): a reader of the installed package must
 * find what they name, so they point at README.md, which ships.
 */
function missingReferences(dir, shipped) {
  const has = new Set(shipped)
  const problems = []
  const check = (from, target, what) => {
    if (!has.has(target)) problems.push(`${from}: ${what} → ${target}, not in the tarball`)
  }
  const targets = (v) => (typeof v === 'string' ? [v] : v && typeof v === 'object' ? Object.values(v).flatMap(targets) : [])
  for (const json of shipped.filter((f) => f === 'package.json' || f.endsWith('/package.json'))) {
    if (json.startsWith('dist/')) continue
    const pkg = JSON.parse(readFileSync(join(dir, json), 'utf8'))
    const base = posix.dirname(json)
    for (const field of ['main', 'module', 'types', 'typings', 'react-native', 'browser']) {
      if (typeof pkg[field] === 'string') check(json, posix.join(base, pkg[field]), field)
    }
    for (const target of targets(pkg.exports)) check(json, posix.join(base, target), 'exports')
  }
  for (const file of shipped.filter((f) => f.startsWith('dist/') && /\.(js|d\.ts)$/.test(f))) {
    const text = readFileSync(join(dir, file), 'utf8')
    const base = posix.dirname(file)
    for (const m of text.matchAll(/(?:from\s+|import\(\s*|require\(\s*)["'](\.{1,2}\/[^"']+)["']/g)) {
      const target = posix.join(base, m[1])
      // A d.ts's `./x.js` means `./x.d.ts`.
      check(file, file.endsWith('.d.ts') && !has.has(target) ? target.replace(/\.js$/, '.d.ts') : target, `import '${m[1]}'`)
    }
    // A d.ts is read whole (declarations and their docs); JS only in its comments.
    const prose = file.endsWith('.d.ts') ? text : [...text.matchAll(/\/\*[\s\S]*?\*\/|^\s*\/\/.*$/gm)].map((m) => m[0]).join('\n')
    const words = prose.replace(/(?:from\s+|import\(\s*|require\(\s*)["'][^"']*["']/g, '')
    for (const m of words.matchAll(/\bSPEC\b|§\s*\d*/g)) problems.push(`${file}: names a spec section (${m[0]}) the package lacks; point to README.md`)
    for (const m of words.matchAll(/(?:\.{1,2}\/)?(?:[\w@.-]+\/)*[\w@-][\w@.-]*\.(md|mdx|markdown|txt|json|tsx?|[mc]?js)\b/g)) {
      const path = m[0]
      // A bare `Next.js` or `res.json` is a word, not a file; a document name or a path is a file.
      if (!path.includes('/') && !/\.(md|mdx|markdown|txt)$/.test(path)) continue
      const candidates = path.startsWith('.') ? [posix.join(base, path)] : [path, posix.join(base, path)]
      if (!candidates.some((c) => has.has(c))) problems.push(`${file}: names ${path}, not in the tarball`)
    }
  }
  return problems
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

  step('references to files the tarball lacks')
  const unpacked = join(scratch, 'unpacked')
  mkdirSync(unpacked)
  run('tar', ['-xzf', tarball, '-C', unpacked, '--strip-components=1'], unpacked)
  const problems = missingReferences(unpacked, shipped)
  if (problems.length) throw new Error(`the package names files it lacks:\n  ${problems.join('\n  ')}`)
  console.log('every target, import and named file is in the tarball')

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

  step('Metro (React Native), package exports on and off')
  metroCheck(scratch, tarball)
  console.log('\npack-check: every toolchain used the packed SDK')
} finally {
  if (existsSync(scratch)) rmSync(scratch, { recursive: true, force: true })
}
