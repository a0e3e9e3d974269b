/** @type {import('next').NextConfig} */
export default {
  // The example lives inside the Herald repository: keep Next from looking
  // for a workspace root above it.
  outputFileTracingRoot: import.meta.dirname,
  turbopack: { root: import.meta.dirname },
}
