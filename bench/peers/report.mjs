// Turns bench/run-peers.sh's raw results into bench/results/peers.md (the
// table, with each server's CPU per delivery as a ratio to the floor's) and
// bench/results/latency.svg (p50 and p99 latency against deliveries/s).
// Usage: node report.mjs TABLE CURVE OUTDIR "DATE COMMIT"
import { readFileSync, writeFileSync } from 'node:fs'

const [tablePath, curvePath, out, stamp] = process.argv.slice(2)
const table = readFileSync(tablePath, 'utf8').trim().split('\n')
const rows = table.slice(2).map((line) => line.split('|').slice(1, -1).map((c) => c.trim()))
const cpu = (cell) => Number.parseFloat(cell) // "6.45 µs, …" → 6.45
const floor = rows.find((r) => r[0] === 'floor')
const ratio = (r, i) => (floor && cpu(floor[i]) > 0 && cpu(r[i]) > 0 ? `${(cpu(r[i]) / cpu(floor[i])).toFixed(2)}×` : '—')
const ratios = [
  '| server | CPU per delivery vs the floor (big fan-out) | vs the floor (fast fan-out) |',
  '|---|---|---|',
  ...rows.map((r) => `| ${r[0]} | ${ratio(r, 1)} | ${ratio(r, 2)} |`),
]
writeFileSync(
  `${out}/peers.md`,
  `Measured ${stamp} by \`bash bench/run-peers.sh\` (servers on core 0, the load generator on core 1).\n\n${table.join('\n')}\n\n${ratios.join('\n')}\n\n![latency against load](latency.svg)\n`,
)

// The chart: one colour per server, p50 solid, p99 dashed; log-scale latency.
const points = readFileSync(curvePath, 'utf8')
  .trim()
  .split('\n')
  .map((l) => l.split(' '))
  .map(([server, load, p50, p99]) => ({ server, load: Number(load), p50: Number(p50), p99: Number(p99) }))
  .filter((p) => p.load > 0 && p.p50 > 0 && p.p99 > 0)
const colours = { herald: '#2563eb', ws: '#d97706', socketio: '#7c3aed', floor: '#16a34a' }
const [W, H, L, B] = [720, 400, 60, 40]
const maxLoad = Math.max(...points.map((p) => p.load), 1)
const lat = points.flatMap((p) => [p.p50, p.p99])
const [lo, hi] = [Math.log10(Math.max(Math.min(...lat, 1), 0.1)), Math.log10(Math.max(...lat, 10))]
const x = (v) => L + (v / maxLoad) * (W - L - 20)
const y = (v) => H - B - ((Math.log10(v) - lo) / (hi - lo || 1)) * (H - B - 20)
const lines = []
for (const server of Object.keys(colours)) {
  const mine = points.filter((p) => p.server === server).sort((a, b) => a.load - b.load)
  if (mine.length === 0) continue
  for (const [key, dash] of [['p50', ''], ['p99', ' stroke-dasharray="6 4"']]) {
    const d = mine.map((p) => `${x(p.load).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ')
    lines.push(`<polyline fill="none" stroke="${colours[server]}" stroke-width="2"${dash} points="${d}"/>`)
  }
}
const ticks = []
for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
  const v = 10 ** e
  if (Math.log10(v) < lo - 1e-9 || Math.log10(v) > hi + 1e-9) continue
  ticks.push(`<line x1="${L}" x2="${W - 20}" y1="${y(v)}" y2="${y(v)}" stroke="#8884"/><text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11">${v} ms</text>`)
}
const legend = Object.entries(colours)
  .map(([s, c], i) => `<text x="${L + 10 + i * 110}" y="16" font-size="12" fill="${c}">${s}</text>`)
  .join('')
writeFileSync(
  `${out}/latency.svg`,
  `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${ticks.join('\n')}
<line x1="${L}" x2="${L}" y1="20" y2="${H - B}" stroke="#888"/><line x1="${L}" x2="${W - 20}" y1="${H - B}" y2="${H - B}" stroke="#888"/>
<text x="${W / 2}" y="${H - 8}" text-anchor="middle" font-size="12">deliveries per second (p50 solid, p99 dashed)</text>
<text x="${L + 4}" y="${H - B - 6}" font-size="11">0</text><text x="${W - 20}" y="${H - B - 6}" text-anchor="end" font-size="11">${maxLoad}</text>
${legend}
${lines.join('\n')}
</svg>
`,
)
console.log(`wrote ${out}/peers.md and ${out}/latency.svg`)
