/* The upload page: each picked or dropped file becomes a resumable tus upload. */
"use strict";

(function () {
  const dropZone = document.getElementById("drop-zone");
  const fileInput = document.getElementById("file-input");
  const keyInput = document.getElementById("api-key");
  const uploadList = document.getElementById("uploads");
  const finishedList = document.getElementById("finished");
  const noUploads = document.getElementById("no-uploads");
  const noFinished = document.getElementById("no-finished");
  const CHUNK_SIZE = 64 * 1024 * 1024;

  keyInput.value = window.ferry.apiKey();
  keyInput.addEventListener("change", () => window.ferry.setApiKey(keyInput.value.trim()));

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function addFinished(file, uploadUrl) {
    const id = uploadUrl.replace(/\/+$/, "").split("/").pop();
    const item = element("li", "finished-item");
    item.dataset.fileId = id;
    item.appendChild(element("span", "file-name", file.name));
    item.appendChild(element("span", "muted", window.ferry.formatSize(file.size)));
    const player = element("a", "player-link", "Open player");
    player.href = "/player/" + encodeURIComponent(id);
    const download = element("a", "download-link", "Download");
    download.href = "/files/" + encodeURIComponent(id);
    download.setAttribute("download", file.name);
    item.append(player, download);
    finishedList.prepend(item);
    noFinished.hidden = true;
    // A signed link downloads without the access key (and can be shared as it is).
    fetch("/files/" + encodeURIComponent(id) + "/link", {
      method: "POST",
      headers: window.ferry.authHeaders(),
    })
      .then((response) => (response.ok ? response.json() : null))
      .then((link) => {
        if (link) download.href = link.url;
      })
      .catch(() => { /* the plain URL still works with a key or without auth */ });
  }

  function startUpload(file) {
    const item = element("li", "upload-item");
    const name = element("span", "file-name", file.name);
    const bar = element("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Progress of " + file.name);
    const status = element("span", "status muted", "Starting…");
    const toggle = element("button", "toggle", "Pause");
    toggle.type = "button";
    item.append(name, bar, status, toggle);
    uploadList.prepend(item);
    noUploads.hidden = true;

    const upload = new tus.Upload(file, {
      endpoint: "/files/",
      chunkSize: CHUNK_SIZE,
      retryDelays: [0, 1000, 3000, 5000, 10000],
      removeFingerprintOnSuccess: true,
      metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
      headers: window.ferry.authHeaders(),
      onProgress(sent, total) {
        const percent = total ? (sent / total) * 100 : 100;
        bar.value = percent;
        status.textContent = percent.toFixed(1) + " % of " + window.ferry.formatSize(total);
      },
      onError(error) {
        const response = error.originalResponse;
        const code = response ? response.getStatus() : 0;
        status.textContent = code === 401 || code === 403
          ? "Refused: set a valid access key above, then resume."
          : "Stopped: " + (response ? response.getBody() || code : error.message);
        status.classList.add("error");
        toggle.textContent = "Resume";
        paused = true;
      },
      onSuccess() {
        bar.value = 100;
        status.textContent = "Done";
        status.classList.remove("error");
        toggle.remove();
        addFinished(file, upload.url);
        item.classList.add("done");
      },
    });

    let paused = false;
    toggle.addEventListener("click", () => {
      if (paused) {
        paused = false;
        toggle.textContent = "Pause";
        status.classList.remove("error");
        upload.options.headers = window.ferry.authHeaders();
        upload.start();
      } else {
        paused = true;
        toggle.textContent = "Resume";
        status.textContent = "Paused";
        upload.abort();
      }
    });

    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  function startAll(files) {
    Array.from(files).forEach(startUpload);
  }

  fileInput.addEventListener("change", () => {
    startAll(fileInput.files);
    fileInput.value = "";
  });
  ["dragenter", "dragover"].forEach((type) =>
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"))
  );
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) startAll(event.dataTransfer.files);
  });
})();
