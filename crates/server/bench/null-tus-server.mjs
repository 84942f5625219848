// A tus 1.0 endpoint that stores nothing: the ceiling the tus-js-client load itself allows on
// this machine, so benchmark ratios can be read against it. Prints `listening on http://ADDR`.
import http from 'node:http'

let next = 0
const sizes = new Map()
const server = http.createServer((req, res) => {
  const h = { 'Tus-Resumable': '1.0.0' }
  if (req.method === 'POST') {
    const id = String(next++)
    sizes.set(id, Number(req.headers['upload-length']))
    req.resume()
    req.on('end', () => res.writeHead(201, { ...h, Location: `/files/${id}` }).end())
  } else if (req.method === 'PATCH') {
    const id = req.url.split('/').pop()
    let n = Number(req.headers['upload-offset'])
    req.on('data', (c) => (n += c.length))
    req.on('end', () => {
      if (n === sizes.get(id)) sizes.delete(id)
      res.writeHead(204, { ...h, 'Upload-Offset': String(n) }).end()
    })
  } else {
    res.writeHead(404, h).end()
  }
})
server.listen(0, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}`))
