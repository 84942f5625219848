// Uploads generated files to a running ferry-server with tus-js-client in each protocol it speaks
// (tus-v1, ietf-draft-03, ietf-draft-05), including an upload aborted mid-body and resumed.
// Prints one JSON line per finished upload; crates/server/tests/interop.rs checks them against
// the files. Usage: node upload.js ENDPOINT DIR [BIG_PROTOCOLS]
'use strict'

const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const tus = require('tus-js-client')

const [endpoint, dir, bigProtocols = 'tus-v1'] = process.argv.slice(2)
if (!endpoint || !dir) {
  console.error('usage: node upload.js ENDPOINT DIR [BIG_PROTOCOLS]')
  process.exit(2)
}

const MB = 1024 * 1024
const PROTOCOLS = ['tus-v1', 'ietf-draft-03', 'ietf-draft-05']

function makeFile(name, size) {
  const file = path.join(dir, name)
  const fd = fs.openSync(file, 'w')
  const block = Buffer.alloc(Math.min(size, 8 * MB))
  for (let written = 0; written < size; ) {
    const n = Math.min(block.length, size - written)
    crypto.randomFillSync(block, 0, n)
    fs.writeSync(fd, block, 0, n)
    written += n
  }
  fs.closeSync(fd)
  return file
}

function upload(file, protocol, extra = {}) {
  return new Promise((resolve, reject) => {
    const heads = []
    const up = new tus.Upload(fs.createReadStream(file), {
      endpoint,
      protocol,
      uploadSize: fs.statSync(file).size,
      metadata: { filename: path.basename(file), protocol },
      retryDelays: [0, 50, 200, 1000],
      onAfterResponse(req, res) {
        if (req.getMethod() === 'HEAD') heads.push(Number(res.getHeader('Upload-Offset')))
      },
      onError: reject,
      onSuccess({ lastResponse }) {
        resolve({ up, heads, objectId: lastResponse.getHeader('Ferry-Object-Id') })
      },
      ...extra,
    })
    up.start()
  })
}

/// Starts an upload, aborts it once half the bytes are sent, then resumes it from its URL.
/// In 8 MiB chunks: an abort called from a progress event stops the next chunk from starting,
/// so the upload cannot finish first however fast the server is (in one request it could).
async function interruptedThenResumed(file, protocol) {
  const size = fs.statSync(file).size
  const url = await new Promise((resolve, reject) => {
    let up
    up = new tus.Upload(fs.createReadStream(file), {
      endpoint,
      protocol,
      uploadSize: size,
      chunkSize: 8 * MB,
      metadata: { filename: path.basename(file), protocol },
      onProgress(sent) {
        if (sent > size / 2 && up.url) {
          const u = up.url
          up.abort(false).then(() => resolve(u), reject)
        }
      },
      onError: reject,
      onSuccess() {
        reject(new Error('upload finished before it could be aborted'))
      },
    })
    up.start()
  })
  const { heads, objectId } = await upload(file, protocol, { uploadUrl: url })
  if (!heads.some((h) => h > 0)) {
    throw new Error(`${protocol}: resume did not continue from a server offset (HEADs: ${heads})`)
  }
  return { objectId, resumedFromBytes: Math.max(...heads) }
}

async function main() {
  const files = {
    zero: makeFile('zero.bin', 0),
    one: makeFile('one.bin', 1),
    five: makeFile('five.bin', 5 * MB),
    resume: makeFile('resume.bin', 64 * MB),
    big: makeFile('big.bin', 200 * MB),
  }
  const report = (o) => console.log(JSON.stringify(o))
  for (const protocol of PROTOCOLS) {
    for (const name of ['zero', 'one', 'five']) {
      // 2 MiB chunks: several appends, the last one carrying Upload-Complete: ?1.
      const { objectId } = await upload(files[name], protocol, { chunkSize: 2 * MB })
      report({ file: path.basename(files[name]), protocol, objectId })
    }
    const { objectId, resumedFromBytes } = await interruptedThenResumed(files.resume, protocol)
    report({ file: 'resume.bin', protocol, objectId, resumedFromBytes })
  }
  for (const protocol of bigProtocols.split(',')) {
    const t0 = process.hrtime.bigint()
    const { objectId } = await upload(files.big, protocol)
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    report({ file: 'big.bin', protocol, objectId, seconds })
  }
  console.log('done')
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e)
  process.exit(1)
})
