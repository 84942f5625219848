// The benchmark load: tus-js-client (tus-v1) uploads against a tus endpoint.
//   node load.js small ENDPOINT COUNT SIZE_BYTES CONCURRENCY   distinct in-memory buffers
//   node load.js large ENDPOINT FILE                           one file, streamed from disk
// Prints one JSON line: seconds, bytes, MB/s, uploads (succeeded), failed. Small mode goes on
// after a failed upload (its error, up to 5 of them, on stderr) and exits 1 at the end if any
// failed; so does a failed large upload.
'use strict'

const fs = require('fs')
const crypto = require('crypto')
const path = require('path')
const tus = require(path.join(__dirname, '../interop/node_modules/tus-js-client'))

function upload(endpoint, input, size, headers) {
  return new Promise((resolve, reject) => {
    const up = new tus.Upload(input, {
      endpoint,
      uploadSize: size,
      headers,
      metadata: { filename: 'bench.bin' },
      retryDelays: null,
      onError: reject,
      onSuccess: resolve,
    })
    up.start()
  })
}

async function main() {
  const [mode, endpoint, ...rest] = process.argv.slice(2)
  const headers = process.env.FERRY_TOKEN ? { Authorization: `Bearer ${process.env.FERRY_TOKEN}` } : {}
  const t0 = process.hrtime.bigint()
  let bytes = 0
  let uploads = 0
  let failed = 0
  if (mode === 'small') {
    const [count, size, concurrency] = rest.map(Number)
    const base = crypto.randomBytes(size)
    let next = 0
    async function worker() {
      while (next < count) {
        const i = next++
        // Distinct content per upload, so content-addressed dedup cannot skip any work.
        const buf = Buffer.from(base)
        buf.writeUInt32LE(i, 0)
        try {
          await upload(endpoint, buf, size, headers)
          bytes += size
          uploads++
        } catch (e) {
          if (failed++ < 5) console.error(`upload ${i} failed: ${e.message || e}`)
        }
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
  } else if (mode === 'large') {
    const file = rest[0]
    const size = fs.statSync(file).size
    await upload(endpoint, fs.createReadStream(file), size, headers)
    bytes = size
    uploads = 1
  } else {
    throw new Error('mode is small or large')
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  console.log(JSON.stringify({ mode, seconds, bytes, mb_per_s: bytes / 1e6 / seconds, uploads, failed }))
  if (failed > 0) {
    console.error(`${failed} upload(s) failed`)
    process.exit(1)
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
