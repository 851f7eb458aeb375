// Drives a live Ferry with tus-js-client the way an application would: upload a file in
// chunks, abort after a few chunks (the "network cable pulled"), then start a new Upload
// that finds the previous one in a URL storage and resumes it. Prints one JSON line with
// what the client saw and sent, so the pytest side can check that no acknowledged byte
// was sent twice and that the download is identical.
//
// usage: node upload.mjs <endpoint> <file> <chunkSize> <abortAfterChunks> <urlStorageFile>
import fs from 'node:fs'
import * as tus from 'tus-js-client'

const [endpoint, filePath, chunkSizeText, abortAfterText, storagePath] = process.argv.slice(2)
const chunkSize = Number(chunkSizeText)
const abortAfter = Number(abortAfterText)
const data = fs.readFileSync(filePath)
const urlStorage = new tus.FileUrlStorage(storagePath)

function patchOffsets(sink) {
  // Upload-Offset of every PATCH the client sends, to see where each attempt starts.
  return (req) => {
    if (req.getMethod() === 'PATCH') sink.push(Number(req.getHeader('Upload-Offset')))
  }
}

function firstAttempt() {
  const sent = []
  return new Promise((resolve, reject) => {
    let chunks = 0
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize,
      urlStorage,
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      retryDelays: null,
      metadata: { filename: 'interop.bin', filetype: 'application/octet-stream' },
      onBeforeRequest: patchOffsets(sent),
      onChunkComplete(_chunk, bytesAccepted) {
        chunks += 1
        if (chunks === abortAfter) {
          upload.abort().then(() => resolve({ url: upload.url, acknowledged: bytesAccepted, sent }))
        }
      },
      onSuccess: () => reject(new Error('upload finished before it could be aborted')),
      onError: reject,
    })
    upload.start()
  })
}

async function resumedAttempt() {
  const sent = []
  const upload = await new Promise((resolve, reject) => {
    const resumed = new tus.Upload(data, {
      endpoint,
      chunkSize,
      urlStorage,
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      retryDelays: [0, 500, 1000],
      onBeforeRequest: patchOffsets(sent),
      onSuccess: () => resolve(resumed),
      onError: reject,
    })
    resumed.findPreviousUploads().then((previous) => {
      if (previous.length !== 1) {
        reject(new Error(`expected one previous upload, found ${previous.length}`))
        return
      }
      resumed.resumeFromPreviousUpload(previous[0])
      resumed.start()
    }, reject)
  })
  return { url: upload.url, sent }
}

try {
  const first = await firstAttempt()
  const second = await resumedAttempt()
  console.log(
    JSON.stringify({
      size: data.length,
      first_url: first.url,
      acknowledged: first.acknowledged,
      first_offsets: first.sent,
      resumed_url: second.url,
      resumed_offsets: second.sent,
    }),
  )
} catch (error) {
  console.error(String(error && error.stack ? error.stack : error))
  process.exit(1)
}
