/**
 * Prints one closing line, `sdk: N passed, N failed, N skipped`, so CI logs
 * that look for that plain shape can count the SDK's tests.
 */
import type { Reporter, TestModule } from 'vitest/node'

export default class SummaryReporter implements Reporter {
  private line = ''

  onTestRunEnd(modules: ReadonlyArray<TestModule>, errors: ReadonlyArray<unknown>): void {
    const counts = { passed: 0, failed: 0, skipped: 0 }
    for (const m of modules) {
      for (const t of m.children.allTests()) {
        const state = t.result().state
        if (state === 'passed') counts.passed++
        else if (state === 'failed') counts.failed++
        else counts.skipped++
      }
      // A file that failed to load has no tests to count: count it as a failure.
      if (m.state() === 'failed' && [...m.children.allTests()].length === 0) counts.failed++
    }
    if (errors.length > 0 && counts.failed === 0) counts.failed = errors.length
    this.line = `sdk: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`
  }

  // After the default reporter's summary, so it is the run's last line.
  onFinished(): void {
    if (this.line) process.stdout.write(`\n${this.line}\n`)
  }
}
