// @tus/server 2.x with @tus/file-store on loopback: the third-party tus server the benchmark
// compares ferry-server with. Prints `listening on http://ADDR` first, like ferry-server.
// Usage: node tus-server.mjs DIR
import http from 'node:http'
import { Server } from '../interop/node_modules/@tus/server/dist/index.js'
import { FileStore } from '../interop/node_modules/@tus/file-store/dist/index.js'

const dir = process.argv[2]
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) })
const server = http.createServer((req, res) => tus.handle(req, res))
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})
