// Builds the /realtime-demo page from the SDK sources into one self-contained
// HTML file (inline JS and CSS) that the server embeds with include_str!, so
// `cargo build` never needs Node. `--check` rebuilds in memory and fails when
// the embedded file differs (it is stale relative to the sources).
import { build } from 'esbuild'
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
export const OUTPUT = fileURLToPath(new URL('../../../crates/herald-server/assets/realtime-demo.html', import.meta.url))

export async function renderDemo() {
  const result = await build({
    entryPoints: [`${root}src/demo/main.ts`],
    bundle: true,
    minify: true,
    format: 'iife',
    target: ['es2019'],
    platform: 'browser',
    write: false,
    legalComments: 'none',
    charset: 'utf8',
    logLevel: 'silent',
  })
  // A literal "</script" inside the bundle would end the inline script early.
  const js = result.outputFiles[0].text.trim().replace(/<\/(script)/gi, '<\\/$1')
  const css = readFileSync(`${root}src/demo/style.css`, 'utf8').trim()
  const template = readFileSync(`${root}src/demo/template.html`, 'utf8')
  return template.replace('/*__CSS__*/', () => css).replace('/*__JS__*/', () => js)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const html = await renderDemo()
  if (process.argv.includes('--check')) {
    let current = ''
    try {
      current = readFileSync(OUTPUT, 'utf8')
    } catch {}
    if (current !== html) {
      console.error(`${OUTPUT} is stale relative to clients/js/src: run \`npm run build:demo\` in clients/js and commit the result.`)
      process.exit(1)
    }
    console.log(`${OUTPUT} is up to date (${html.length} bytes).`)
  } else {
    writeFileSync(OUTPUT, html)
    console.log(`wrote ${OUTPUT} (${html.length} bytes)`)
  }
}
