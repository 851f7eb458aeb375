// Uploads a stream whose length is not known up front (uploadLengthDeferred), as an app
// piping a recording or a generated archive would: tus-js-client declares Upload-Length
// with the last chunk. Prints one JSON line: the upload URL and the byte count.
// (tus-js-client 4.3 in Node stalls when such a stream ends exactly on a chunk boundary,
// before it sends anything, so the test uses a size that does not.)
//
// usage: node deferred.mjs <endpoint> <file> <chunkSize>
import fs from 'node:fs'
import { PassThrough } from 'node:stream'
import * as tus from 'tus-js-client'

const [endpoint, filePath, chunkSizeText] = process.argv.slice(2)

try {
  const url = await new Promise((resolve, reject) => {
    // A plain stream (not an fs.ReadStream, which tus-js-client would reopen by path and
    // measure): the client cannot know the length until the stream ends.
    const stream = fs.createReadStream(filePath).pipe(new PassThrough())
    const upload = new tus.Upload(stream, {
      endpoint,
      chunkSize: Number(chunkSizeText),
      uploadLengthDeferred: true,
      retryDelays: null,
      metadata: { filename: 'deferred.bin' },
      onSuccess: () => resolve(upload.url),
      onError: reject,
    })
    upload.start()
  })
  console.log(JSON.stringify({ url, size: fs.statSync(filePath).size }))
} catch (error) {
  console.error(String(error && error.stack ? error.stack : error))
  process.exit(1)
}
