// A per-request round-robin HTTP/1.1 reverse proxy for the scale-out benchmark, used only when
// nginx cannot be had. Bodies are streamed both ways (never buffered), connections to the
// upstreams are kept alive and every request goes to the next upstream, whichever client
// connection it came on. Prints `listening on http://ADDR` first, like ferry-server.
//   node rr-proxy.js http://127.0.0.1:PORT_A http://127.0.0.1:PORT_B ...
'use strict'

const http = require('http')

const upstreams = process.argv.slice(2).map((u) => new URL(u))
if (upstreams.length === 0) {
  console.error('usage: node rr-proxy.js UPSTREAM_URL...')
  process.exit(2)
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 })
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade'])
const endToEnd = (h) => Object.fromEntries(Object.entries(h).filter(([k]) => !HOP.has(k)))
let next = 0

const server = http.createServer((req, res) => {
  const up = upstreams[next++ % upstreams.length]
  const out = http.request(
    { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: endToEnd(req.headers), agent },
    (upRes) => {
      res.writeHead(upRes.statusCode, endToEnd(upRes.headers))
      upRes.pipe(res)
      upRes.on('error', () => res.destroy())
    },
  )
  out.on('error', (e) => {
    if (res.headersSent) return res.destroy()
    res.writeHead(502, { 'content-type': 'text/plain' })
    res.end(`rr-proxy: ${e.message}\n`)
  })
  req.on('error', () => out.destroy())
  res.on('close', () => {
    if (!res.writableFinished) out.destroy()
  })
  req.pipe(out)
})
server.keepAliveTimeout = 65_000
server.headersTimeout = 66_000
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})
