// tus-js-client resuming an upload through another Ferry node, as behind a load balancer
// that moved the client: upload through node A, abort in the middle of a chunk (the
// "network cable pulled"), then resume the same upload from node B by giving the client
// the upload URL rewritten to B (the `uploadUrl` option: HEAD there, then PATCH on).
// Prints one JSON line: what the client saw acknowledged, and every request of the
// resumed attempt (method, URL, Upload-Offset sent) with its answer (status, Upload-Offset).
//
// usage: node cross_node.mjs <endpointA> <originB> <file> <chunkSize> <abortAfterChunks> <delayMs>
// (the abort comes <delayMs> after the <abortAfterChunks>th chunk was acknowledged, while
// the next one is on its way)
import fs from 'node:fs'
import * as tus from 'tus-js-client'

const [endpointA, originB, filePath, chunkSizeText, abortAfterText, delayText] =
  process.argv.slice(2)
const chunkSize = Number(chunkSizeText)
const abortAfter = Number(abortAfterText)
const delayMs = Number(delayText)
const data = fs.readFileSync(filePath)

function firstAttempt() {
  return new Promise((resolve, reject) => {
    let acknowledged = 0
    let chunks = 0
    const upload = new tus.Upload(data, {
      endpoint: endpointA,
      chunkSize,
      retryDelays: null,
      metadata: { filename: 'cross-node.bin', filetype: 'application/octet-stream' },
      onChunkComplete(_chunk, bytesAccepted) {
        acknowledged = bytesAccepted
        chunks += 1
        if (chunks === abortAfter) {
          setTimeout(() => {
            const seen = acknowledged
            upload.abort().then(() => resolve({ url: upload.url, acknowledged: seen }), reject)
          }, delayMs)
        }
      },
      onSuccess: () => reject(new Error('upload finished before it could be aborted')),
      onError: reject,
    })
    upload.start()
  })
}

function resumedThrough(uploadUrl) {
  const requests = []
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint: `${originB}/files/`,
      uploadUrl,
      chunkSize,
      // 423 while node A still finishes the aborted PATCH, 409 if it committed meanwhile:
      // the client asks for the offset again and goes on, as tus-js-client does.
      retryDelays: [0, 250, 500, 1000, 2000, 4000],
      onBeforeRequest(req) {
        const offset = req.getHeader('Upload-Offset')
        requests.push({
          method: req.getMethod(),
          url: req.getURL(),
          offset: offset === undefined ? null : Number(offset),
        })
      },
      onAfterResponse(req, res) {
        const offset = res.getHeader('Upload-Offset')
        const request = requests.findLast((r) => r.method === req.getMethod())
        request.status = res.getStatus()
        request.answered_offset = offset === undefined ? null : Number(offset)
      },
      onSuccess: () => resolve({ url: upload.url, requests }),
      onError: reject,
    })
    upload.start()
  })
}

try {
  const first = await firstAttempt()
  const moved = originB + new URL(first.url).pathname
  const second = await resumedThrough(moved)
  console.log(
    JSON.stringify({
      size: data.length,
      first_url: first.url,
      acknowledged: first.acknowledged,
      resumed_url: second.url,
      resumed_requests: second.requests,
    }),
  )
  // Done. Exit rather than wait for idle sockets: a node that answered 409/423 before it
  // read a PATCH's body never closes that connection (see
  // test_a_patch_answered_before_its_body_does_not_keep_its_connection_open).
  process.exit(0)
} catch (error) {
  console.error(String(error && error.stack ? error.stack : error))
  process.exit(1)
}
