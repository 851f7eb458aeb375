// @tus/server with its file store on 127.0.0.1: the Node peer that
// scripts/bench_small_uploads.py measures Ferry against, configured as its README shows.
//
// Usage: node server.js PORT DIRECTORY  (or the environment: PORT=... TUS_DIR=...)
import { mkdirSync } from "node:fs";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const port = Number(process.argv[2] ?? process.env.PORT);
const directory = process.argv[3] ?? process.env.TUS_DIR;
if (!Number.isInteger(port) || port <= 0 || !directory) {
  console.error("usage: node server.js PORT DIRECTORY");
  process.exit(2);
}
mkdirSync(directory, { recursive: true });

const server = new Server({
  path: "/files",
  datastore: new FileStore({ directory }),
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
server.listen({ host: "127.0.0.1", port }, () => {
  console.log(`@tus/server listening on 127.0.0.1:${port}, storing in ${directory}`);
});
