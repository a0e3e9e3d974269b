// Builds the package twice from the same sources: ES modules in dist/ and
// CommonJS in dist/cjs/ (with a package.json that says so), so `import` and
// `require` both work everywhere the package says it runs: Node 20.0+, Jest's
// default CommonJS runtime, Metro with or without package exports. The SDK
// keeps no module-level state (no registry, no singleton), so an app that
// loads both copies has two sets of classes but nothing that disagrees.
import { execFileSync } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url))
rmSync(`${root}dist`, { recursive: true, force: true })
for (const project of ['tsconfig.build.json', 'tsconfig.cjs.json']) {
  execFileSync(process.execPath, [tsc, '-p', project], { cwd: root, stdio: 'inherit' })
}
writeFileSync(`${root}dist/cjs/package.json`, `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`)
console.log('built dist/ (ESM) and dist/cjs/ (CommonJS)')
