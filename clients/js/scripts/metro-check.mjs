// Bundles the packed SDK with Metro, React Native's bundler (issue 14), as an
// app does: the app's metro.config.js is React Native 0.88's template
// (@react-native/metro-config's defaults, its Babel preset), `react-native` is
// a small local stub module (AppState, View, … as the SDK imports them), React
// is real, @react-native-community/netinfo is absent (an optional peer), and
// the entry imports `herald-realtime`, `/react` and `/react-native`. Real
// `Metro.runBuild`s, four of them:
//   - package exports on (Metro's default since React Native 0.79) and off (as
//     before 0.79): each must succeed, bundle exactly the CommonJS entry files
//     (dist/cjs/index.js, react.js, react-native.js) and no ES module copy
//     beside them, and the bundle, run in a Node vm, must give every import
//     with one MobileRealtimeService class whichever entry point it came from;
//   - exports off with the react-native/ stub folder removed must fail to
//     resolve `herald-realtime/react-native`: proof that the off build went
//     through the stub folder;
//   - exports on with every stub folder removed must pass the same checks:
//     proof that the exports map alone resolves (Metro reads the nearest
//     package.json of a subpath, so with the stub folders present the on
//     build takes them too, which is why they point at the same files).
// Why one copy needs the `react-native` condition in package.json's exports:
// Metro resolves an `import` with the `import` condition, so without it the
// root would come from the ES module build (dist/index.js) while
// `/react-native` comes, through its stub folder, from dist/cjs: two copies
// of the SDK and two MobileRealtimeService classes in one app.
// Run alone: `node scripts/metro-check.mjs` (packs first). pack-check.mjs
// calls metroCheck() with its tarball.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import vm from 'node:vm'

export const METRO = '0.87.1'
/** React Native 0.88's Metro config, which runs on Metro ^0.87.1. */
export const RN_METRO_CONFIG = '0.88.1'
const REACT = '19.2.0'

function run(cmd, args, cwd, env) {
  return execFileSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 })
}
function write(dir, files) {
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true })
    writeFileSync(join(dir, name), typeof text === 'string' ? text : `${JSON.stringify(text, null, 2)}\n`)
  }
}

const STUB_FOLDERS = ['react', 'react-native', 'server', 'testing']
const SDK = 'node_modules/herald-realtime/'
/** What the entry's three imports must resolve to, whatever the exports setting. */
const ENTRY_DEPS = ['dist/cjs/index.js', 'dist/cjs/react.js', 'dist/cjs/react-native.js'].map((f) => SDK + f).sort()

const files = {
  'package.json': {
    name: 'metro-app',
    private: true,
    devDependencies: {
      metro: METRO,
      'metro-config': METRO,
      'metro-runtime': METRO,
      '@react-native/metro-config': RN_METRO_CONFIG,
      react: REACT,
    },
  },
  // React Native's template, with package exports set by the check.
  'metro.config.js': `const { getDefaultConfig, mergeConfig } = require('@react-native/metro-config')
module.exports = mergeConfig(getDefaultConfig(__dirname), {
  resolver: { unstable_enablePackageExports: process.env.HERALD_METRO_EXPORTS === 'on' },
})
`,
  // The \`metro build\` an app's release runs, through Metro's API: quiet, no
  // watchman, no cache read or written (nothing left in the temp folder), and
  // SHA-1s only of the files bundled. A resolver warning (an exports map
  // Metro cannot use, say) fails the build.
  'build.js': `const Metro = require('metro')
const { mergeConfig } = require('metro-config')
const path = require('node:path')
const warnings = []
;(async () => {
  const loaded = await Metro.loadConfig({ cwd: __dirname, config: path.join(__dirname, 'metro.config.js') })
  const config = mergeConfig(loaded, {
    cacheStores: [],
    unstable_fileMapCacheManagerFactory: () => ({ read: async () => null, write: async () => {}, end: async () => {} }),
    resetCache: true,
    maxWorkers: 2,
    reporter: { update: (event) => event.type === 'resolver_warning' && warnings.push(event.message) },
    resolver: { useWatchman: false },
    watcher: { unstable_lazySha1: true },
  })
  await Metro.runBuild(config, { entry: 'index.js', out: process.env.HERALD_METRO_OUT, platform: 'android', dev: true, minify: false })
  if (warnings.length) throw new Error('resolver warnings:\\n' + warnings.join('\\n'))
})().catch((e) => {
  console.error(e && e.message ? e.message : e)
  process.exit(1)
})
`,
  'index.js': `import { RealtimeService, RealtimeClient, MobileRealtimeService as MobileFromRoot } from 'herald-realtime'
import { useRealtime as useWebRealtime } from 'herald-realtime/react'
import { MobileRealtimeService, useRealtime, RealtimeDemo } from 'herald-realtime/react-native'
globalThis.heraldMetro = { RealtimeService, RealtimeClient, MobileFromRoot, useWebRealtime, MobileRealtimeService, useRealtime, RealtimeDemo }
`,
}

/** The stub react-native: what src/react-native.tsx imports, written after npm install (which would prune it). */
const stub = {
  'node_modules/react-native/package.json': { name: 'react-native', version: '0.88.1', main: 'index.js' },
  'node_modules/react-native/index.js': `'use strict'
const component = (name) => Object.assign((props) => ({ type: name, props }), { displayName: name })
module.exports = {
  AppState: { currentState: 'active', addEventListener: () => ({ remove() {} }) },
  Pressable: component('Pressable'),
  ScrollView: component('ScrollView'),
  StyleSheet: { create: (styles) => styles },
  Text: component('Text'),
  TextInput: component('TextInput'),
  View: component('View'),
}
`,
  'node_modules/react-native/setup-env.js': '',
}

/**
 * Module id → path and dependency ids, read from a dev bundle (each module
 * ends `},id,[deps],"path");`, or `null` for no deps; a missing optional
 * dependency is `null` in the list).
 */
function modulesOf(bundle) {
  const modules = new Map()
  for (const m of bundle.matchAll(/\},(\d+),(?:\[([\d,nul]*)\]|null),"([^"]+)"\);$/gm)) {
    modules.set(Number(m[1]), { path: m[3], deps: m[2] ? m[2].split(',').map((d) => (d === 'null' ? null : Number(d))) : [] })
  }
  return modules
}

function checkBundle(label, file) {
  const bundle = readFileSync(file, 'utf8')
  const modules = modulesOf(bundle)
  const entry = [...modules.values()].find((m) => m.path === 'index.js')
  if (!entry) throw new Error(`${label}: no entry module in the bundle (${modules.size} modules found)`)
  const deps = entry.deps.map((id) => modules.get(id)?.path).sort()
  if (JSON.stringify(deps) !== JSON.stringify(ENTRY_DEPS)) {
    throw new Error(`${label}: the entry's imports resolved to ${deps.join(', ')}, not ${ENTRY_DEPS.join(', ')}`)
  }
  const sdk = [...modules.values()].map((m) => m.path).filter((p) => p.startsWith(SDK))
  const esm = sdk.filter((p) => !p.startsWith(`${SDK}dist/cjs/`))
  if (esm.length) throw new Error(`${label}: the bundle has a second copy of the SDK beside dist/cjs: ${esm.join(', ')}`)
  if (![...modules.values()].some((m) => m.path === 'node_modules/react-native/index.js')) {
    throw new Error(`${label}: the react-native stub is not in the bundle`)
  }
  // The app has no @react-native-community/netinfo: its require stays an optional dependency, left out.
  const mobile = [...modules.values()].find((m) => m.path === `${SDK}dist/cjs/react-native.js`)
  if (!mobile.deps.includes(null)) throw new Error(`${label}: no optional (missing) dependency in dist/cjs/react-native.js`)
  const context = vm.createContext({ console, setTimeout, clearTimeout })
  vm.runInContext(bundle, context, { filename: file })
  const got = context.heraldMetro
  if (!got) throw new Error(`${label}: the bundle ran but its entry did not`)
  for (const [name, value] of Object.entries(got)) {
    if (typeof value !== 'function') throw new Error(`${label}: ${name} is ${typeof value}, not a function`)
  }
  if (got.MobileFromRoot !== got.MobileRealtimeService) {
    throw new Error(`${label}: herald-realtime and herald-realtime/react-native gave two MobileRealtimeService classes`)
  }
  if (got.useWebRealtime === got.useRealtime) throw new Error(`${label}: herald-realtime/react-native gave the web useRealtime`)
  return `${modules.size} modules, ${sdk.length} from herald-realtime/dist/cjs, ${bundle.length} bytes`
}

/** Installs Metro and React into a scratch project beside the unpacked tarball, then runs the four builds. */
export function metroCheck(scratch, tarball) {
  const started = Date.now()
  const dir = join(scratch, 'metro')
  write(dir, files)
  run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], dir)
  const pkg = join(dir, SDK)
  mkdirSync(pkg, { recursive: true })
  run('tar', ['-xzf', tarball, '-C', pkg, '--strip-components=1'], dir)
  write(dir, stub)
  console.log(`installed metro ${METRO}, @react-native/metro-config ${RN_METRO_CONFIG}, react ${REACT} in ${((Date.now() - started) / 1000).toFixed(1)} s`)

  const build = (exportsOn, out) => run(process.execPath, ['build.js'], dir, { HERALD_METRO_EXPORTS: exportsOn ? 'on' : 'off', HERALD_METRO_OUT: out })
  const held = join(scratch, 'metro-held-stubs')
  mkdirSync(held)
  for (const exportsOn of [true, false]) {
    const label = `metro, package exports ${exportsOn ? 'on' : 'off'}`
    const t = Date.now()
    try {
      build(exportsOn, join(dir, `bundle-${exportsOn ? 'on' : 'off'}.js`))
    } catch (e) {
      throw new Error(`${label}: the build failed:\n${e.stderr || e.message}`)
    }
    console.log(`${label}: ${checkBundle(label, join(dir, `bundle-${exportsOn ? 'on' : 'off'}.js`))} (${((Date.now() - t) / 1000).toFixed(1)} s)`)
  }

  renameSync(join(pkg, 'react-native'), join(held, 'react-native'))
  let failed = null
  try {
    build(false, join(dir, 'bundle-off-nostub.js'))
  } catch (e) {
    failed = String(e.stderr || e.message)
  }
  if (failed === null || !failed.includes('herald-realtime/react-native')) {
    throw new Error(`metro, exports off, no react-native/ stub folder: expected a failure to resolve herald-realtime/react-native, got ${failed === null ? 'a bundle' : failed}`)
  }
  console.log('metro, package exports off, react-native/ stub folder removed: fails to resolve herald-realtime/react-native, as it must')

  for (const folder of STUB_FOLDERS) if (existsSync(join(pkg, folder))) renameSync(join(pkg, folder), join(held, folder))
  const label = 'metro, package exports on, every stub folder removed'
  try {
    build(true, join(dir, 'bundle-on-nostub.js'))
  } catch (e) {
    throw new Error(`${label}: the build failed:\n${e.stderr || e.message}`)
  }
  console.log(`${label}: ${checkBundle(label, join(dir, 'bundle-on-nostub.js'))}`)
  console.log(`metro ok (${((Date.now() - started) / 1000).toFixed(1)} s)`)
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const root = fileURLToPath(new URL('..', import.meta.url))
  const scratch = mkdtempSync(join(tmpdir(), 'herald-metro-'))
  try {
    const report = run('npm', ['pack', '--pack-destination', scratch, '--json'], root)
    const packed = JSON.parse(report.slice(report.search(/^\[/m)))[0]
    metroCheck(scratch, join(scratch, packed.filename))
  } finally {
    rmSync(scratch, { recursive: true, force: true })
  }
}
