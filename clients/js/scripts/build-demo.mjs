// Builds the pages the server embeds — the /realtime-demo page (from the SDK
// sources) and the /admin dashboard — each into one self-contained HTML file
// (inline JS and CSS) that the server includes with include_str!, so
// `cargo build` never needs Node. `--check` rebuilds in memory and fails when
// an embedded file differs (it is stale relative to the sources).
import { build } from 'esbuild'
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const assets = fileURLToPath(new URL('../../../crates/herald-server/assets/', import.meta.url))

/** Source folder under src/ → embedded file. */
export const PAGES = [
  { source: 'demo', output: `${assets}realtime-demo.html` },
  { source: 'admin', output: `${assets}admin.html` },
]

export async function renderPage(source) {
  const result = await build({
    entryPoints: [`${root}src/${source}/main.ts`],
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
  const css = readFileSync(`${root}src/${source}/style.css`, 'utf8').trim()
  const template = readFileSync(`${root}src/${source}/template.html`, 'utf8')
  return template.replace('/*__CSS__*/', () => css).replace('/*__JS__*/', () => js)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let stale = false
  for (const { source, output } of PAGES) {
    const html = await renderPage(source)
    if (process.argv.includes('--check')) {
      let current = ''
      try {
        current = readFileSync(output, 'utf8')
      } catch {}
      if (current !== html) {
        console.error(`${output} is stale relative to clients/js/src: run \`npm run build:demo\` in clients/js and commit the result.`)
        stale = true
      } else {
        console.log(`${output} is up to date (${html.length} bytes).`)
      }
    } else {
      writeFileSync(output, html)
      console.log(`wrote ${output} (${html.length} bytes)`)
    }
  }
  if (stale) process.exit(1)
}
