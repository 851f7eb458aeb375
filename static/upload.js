/* The upload page: each picked or dropped file becomes a resumable tus upload, at most
   MAX_PARALLEL at a time, showing bytes sent, speed and time left, retrying by itself while
   the server cannot be reached, and saying in words why the server refused a file. */
"use strict";

(function () {
  const MAX_PARALLEL = 3;
  const CHUNK_SIZE = 64 * 1024 * 1024;
  /** Waits between tries while the server cannot be reached: about ten minutes in all (a
   * laptop changing networks). tus-js-client starts the count again once bytes get through. */
  const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 15000, 30000, 30000, 60000, 60000, 60000, 60000, 60000, 60000, 60000, 60000];
  /** Which buttons a row shows in each state. */
  const ACTIONS = {
    queued: ["cancel"],
    starting: ["cancel"],
    uploading: ["pause", "cancel"],
    reconnecting: ["retryNow", "cancel"],
    paused: ["resume", "cancel"],
    "needs-key": ["retry", "cancel"],
    stopped: ["retry", "cancel"],
    "cancel-failed": ["cancel", "remove"],
    refused: ["remove"],
    cancelling: [],
    done: [],
  };
  const BUTTON_LABELS = {
    pause: "Pause", resume: "Resume", cancel: "Cancel", remove: "Remove", retry: "Retry", retryNow: "Retry now",
  };
  const ACTIVE_STATES = new Set(["queued", "starting", "uploading", "reconnecting", "paused", "needs-key", "stopped"]);
  const SLOT_STATES = new Set(["starting", "uploading", "reconnecting"]);

  const transport = window.ferryTus;
  const { element, rowElements, SpeedMeter } = window.ferryRows;
  const { formatSize, formatSpeed, formatDuration } = window.ferry;
  const byId = (id) => document.getElementById(id);
  const dropZone = byId("drop-zone");
  const fileInput = byId("file-input");
  const access = byId("access");
  const keyInput = byId("api-key");
  const keyProblem = byId("key-problem");
  const uploadList = byId("uploads");
  const finishedList = byId("finished");

  const rows = [];
  let batch = [];
  let maxSize = null;
  const httpStack = new transport.PatientHttpStack();

  /** One file: its tus upload, its row on the page, and where it stands. */
  class FileUpload {
    constructor(file, resumeKey) {
      this.file = file;
      this.resumeKey = resumeKey || null;
      this.state = "queued";
      this.sent = 0;
      this.keySent = false;
      this.lastStatus = 0;
      this.nextTry = null;
      this.meter = new SpeedMeter();
      this.view = rowElements(file.name, file.size);
      this.view.item.dataset.state = this.state;
      this.upload = new tus.Upload(file, {
        endpoint: transport.ENDPOINT,
        chunkSize: CHUNK_SIZE,
        retryDelays: RETRY_DELAYS,
        removeFingerprintOnSuccess: true,
        metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
        httpStack,
        urlStorage: transport.storageKeptOnAuthFailure(() => this.lastStatus),
        onAfterResponse: (_, response) => { this.lastStatus = response.getStatus(); },
        onShouldRetry: (error, attempt, options) => this.shouldRetry(error, attempt, options),
        onProgress: (sent) => this.progressed(sent),
        onSuccess: () => this.succeeded(),
        onError: (error) => this.failed(error),
      });
    }

    get total() { return this.file.size; }
    get active() { return ACTIVE_STATES.has(this.state); }
    get holdsSlot() { return SLOT_STATES.has(this.state); }

    speed() {
      return this.state === "uploading" ? this.meter.bytesPerSecond() : null;
    }

    setState(state, message, detail) {
      const changed = state !== this.state;
      this.state = state;
      this.message = message || "";
      this.view.detail.textContent = detail || "";
      this.view.detail.hidden = !detail;
      this.view.item.dataset.state = state;
      this.view.status.classList.toggle("error", state === "refused" || state === "needs-key" || state === "stopped" || state === "cancel-failed");
      if (changed) this.renderActions();
      this.render();
    }

    renderActions() {
      const names = this.state === "queued" && !this.upload.url ? ["remove"] : ACTIONS[this.state];
      this.view.actions.replaceChildren(...names.map((name) => {
        const button = element("button", "action-" + name, BUTTON_LABELS[name]);
        button.type = "button";
        button.setAttribute("aria-label", BUTTON_LABELS[name] + " " + this.file.name);
        button.addEventListener("click", () => this[name]());
        return button;
      }));
    }

    statusText() {
      const of = formatSize(this.sent) + " of " + formatSize(this.total);
      switch (this.state) {
        case "queued":
          return "Queued: " + MAX_PARALLEL + " files upload at a time";
        case "starting":
          return "Starting…";
        case "uploading": {
          if (this.total > 0 && this.sent >= this.total) return "All " + formatSize(this.total) + " sent; the server is storing it…";
          const speed = this.speed();
          if (!speed) return of;
          return of + " · " + formatSpeed(speed) + " · " + formatDuration((this.total - this.sent) / speed) + " left";
        }
        case "reconnecting": {
          const wait = (this.nextTry.at - performance.now()) / 1000;
          const next = wait > 0 ? "next try in " + formatDuration(wait) : "trying now";
          return "Reconnecting… (attempt " + this.nextTry.attempt + ", " + next + ")";
        }
        case "paused":
          return "Paused at " + of;
        case "cancelling":
          return "Cancelling…";
        default:
          return this.message;
      }
    }

    render() {
      this.view.status.textContent = this.statusText();
      this.view.bar.value = this.total ? (this.sent / this.total) * 100 : this.state === "done" ? 100 : 0;
    }

    /** Send the key stored now (the person may have changed it since the last try). */
    useCurrentKey() {
      this.keySent = Boolean(window.ferry.apiKey());
      this.upload.options.headers = window.ferry.authHeaders();
    }

    begin() {
      this.setState("starting");
      this.useCurrentKey();
      this.meter.reset();
      const resumed = this.upload.url ? Promise.resolve() : this.resumeRemembered();
      resumed.catch(() => {}).then(() => {
        if (this.state === "starting") this.upload.start();
      });
    }

    /** Go on with an upload this browser remembers for the same file (tus-js-client's
     * fingerprint: name, type, size, modification time), rather than sending it all again. */
    async resumeRemembered() {
      const previous = await this.upload.findPreviousUploads();
      const match = previous.find((entry) => entry.urlStorageKey === this.resumeKey) || previous[0];
      if (!match) return;
      this.upload.resumeFromPreviousUpload(match);
      unfinished.drop(match.urlStorageKey);
    }

    progressed(sent) {
      if (this.state === "starting" || this.state === "reconnecting") this.setState("uploading");
      if (sent < this.sent) this.meter.reset();  // resumed from an earlier offset
      this.sent = sent;
      this.meter.add(sent);
      this.render();
      renderSummary();
    }

    shouldRetry(error, attempt, options) {
      if (!transport.isRetryable(error)) return false;
      this.nextTry = { attempt: attempt + 1, at: performance.now() + options.retryDelays[attempt] };
      this.setState("reconnecting", "", transport.whyItFailed(error));
      renderSummary();
      return true;
    }

    failed(error) {
      const failure = transport.describeFailure(error, this.file, this.keySent);
      this.setState(failure.kind, failure.message, failure.detail);
      if (failure.kind === "needs-key") askForKey(this.keySent);
      pump();
    }

    succeeded() {
      this.sent = this.total;
      this.setState("done");
      addFinished(this.file, this.upload.url);
      this.view.item.remove();
      pump();
    }

    pause() {
      this.upload.abort();
      this.setState("paused");
      pump();
    }

    resume() {
      this.setState("queued");
      pump();
    }

    retry() {
      this.resume();
    }

    retryNow() {
      this.upload.abort();
      this.useCurrentKey();
      this.nextTry.at = performance.now();
      this.render();
      this.upload.start();
    }

    /** Stop, and delete what the server holds of it (tus termination). */
    async cancel() {
      this.setState("cancelling");
      await this.upload.abort();
      pump();
      if (this.upload.url) {
        try {
          await transport.terminate(this.upload.url);
        } catch (error) {
          const why = transport.whyItFailed(error);
          this.setState("cancel-failed", "could not cancel it on the server: " + why + "; Remove forgets it here and the server expires it later");
          return;
        }
      }
      this.discard();
    }

    /** Take the row away; what the server holds of it is deleted there if it can be, and
     * forgotten here in any case (the server expires what it could not delete). */
    remove() {
      this.upload.abort();
      const url = this.upload.url;
      if (url) transport.terminate(url).catch(() => transport.forget(url));
      this.discard();
    }

    discard() {
      this.state = "removed";
      this.view.item.remove();
      const index = rows.indexOf(this);
      if (index >= 0) rows.splice(index, 1);
      batch = batch.filter((row) => row !== this);
      pump();
    }
  }

  /** Start queued uploads while fewer than MAX_PARALLEL are running. */
  function pump() {
    let running = rows.filter((row) => row.holdsSlot).length;
    for (const row of rows) {
      if (running >= MAX_PARALLEL) break;
      if (row.state === "queued") {
        row.begin();
        running += 1;
      }
    }
    byId("no-uploads").hidden = rows.some((row) => row.state !== "done");
    renderSummary();
  }

  /** One line for everything picked since the page was last idle. */
  function renderSummary() {
    const summary = byId("summary");
    summary.hidden = batch.length === 0;
    if (!batch.length) return;
    const counted = batch.filter((row) => row.state !== "refused");
    const total = counted.reduce((sum, row) => sum + row.total, 0);
    const sent = counted.reduce((sum, row) => sum + row.sent, 0);
    const running = batch.filter((row) => row.active);
    byId("overall-bar").value = total ? (sent / total) * 100 : 0;
    const files = (count) => (count === 1 ? "1 file" : count + " files");
    let text;
    if (running.length) {
      const moving = running.some((row) => row.holdsSlot || row.state === "queued");
      text = (moving ? "Uploading " : "Stopped, ") + files(counted.length) + ": " + formatSize(sent) + " of " + formatSize(total);
      const speed = running.reduce((sum, row) => sum + (row.speed() || 0), 0);
      if (speed > 0) text += " · " + formatSpeed(speed) + " · " + formatDuration((total - sent) / speed) + " left";
      const waiting = running.filter((row) => row.state === "queued").length;
      if (waiting) text += " · " + waiting + " queued";
    } else {
      const done = batch.filter((row) => row.state === "done");
      text = done.length
        ? "Done: " + files(done.length) + ", " + formatSize(done.reduce((sum, row) => sum + row.total, 0))
        : "Nothing uploaded";
    }
    const refused = batch.length - counted.length;
    if (refused) text += " · " + refused + " refused";
    byId("overall-status").textContent = text;
  }

  function addFinished(file, uploadUrl) {
    const id = uploadUrl.replace(/\/+$/, "").split("/").pop();
    const item = element("li", "finished-item");
    item.dataset.fileId = id;
    item.appendChild(element("span", "file-name", file.name));
    item.appendChild(element("span", "muted", formatSize(file.size)));
    const player = element("a", "player-link", "Open player");
    player.href = "/player/" + encodeURIComponent(id);
    const download = element("a", "download-link", "Download");
    download.href = "/files/" + encodeURIComponent(id);
    download.setAttribute("download", file.name);
    item.append(player, download);
    finishedList.prepend(item);
    byId("no-finished").hidden = true;
    // A signed link downloads without the access key (and can be shared as it is).
    fetch("/files/" + encodeURIComponent(id) + "/link", { method: "POST", headers: window.ferry.authHeaders() })
      .then((response) => (response.ok ? response.json() : null))
      .then((link) => {
        if (link) download.href = link.url;
      })
      .catch(() => { /* the plain URL still works with a key or without auth */ });
  }

  /** Open the access-key field and say what is wrong: no key was sent, or it was refused. */
  function askForKey(keySent) {
    access.open = true;
    keyProblem.textContent = keySent
      ? "The access key was refused: enter a valid one below."
      : "This server needs an access key: enter it below.";
    keyProblem.hidden = false;
    if (document.activeElement !== keyInput) keyInput.focus();
  }

  /** A key was entered: keep it, and try again every upload that stopped for want of one. */
  function keyChanged() {
    window.ferry.setApiKey(keyInput.value.trim());
    keyProblem.hidden = true;
    rows.filter((row) => row.state === "needs-key").forEach((row) => row.setState("queued"));
    pump();
    unfinished.refresh();
  }

  const unfinished = window.ferryUnfinished({
    list: byId("unfinished"),
    section: byId("unfinished-section"),
    inUse: () => rows.map((row) => row.upload.url).filter(Boolean),
    resume: (file, storageKey) => addFiles([file], storageKey),
  });

  /** Queue ``files`` (refusing at once any that is larger than the server takes). */
  async function addFiles(files, resumeKey) {
    const limit = maxSize !== null ? maxSize : (maxSize = await transport.serverMaxSize());
    if (!batch.some((row) => row.active)) batch = [];
    for (const file of files) {
      const row = new FileUpload(file, resumeKey);
      rows.push(row);
      batch.push(row);
      uploadList.appendChild(row.view.item);
      if (limit !== null && file.size > limit) {
        row.setState("refused", "too large: " + formatSize(file.size) + ", the limit is " + formatSize(limit));
      } else {
        row.renderActions();
        row.render();
      }
    }
    pump();
  }

  function showSizeLimit(limit) {
    if (limit === null) return;
    const note = byId("size-limit");
    note.textContent = "Up to " + formatSize(limit) + " per file";
    note.hidden = false;
  }

  keyInput.value = window.ferry.apiKey();
  keyInput.addEventListener("change", keyChanged);
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keyChanged();
  });
  fileInput.addEventListener("change", () => {
    addFiles(Array.from(fileInput.files));
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
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(Array.from(event.dataTransfer.files));
  });
  // Back online: try at once instead of waiting out the current delay.
  window.addEventListener("online", () => rows.filter((row) => row.state === "reconnecting").forEach((row) => row.retryNow()));
  // Countdowns and speeds move on even when no progress event arrives.
  setInterval(() => {
    rows.forEach((row) => {
      if (row.state === "uploading" || row.state === "reconnecting") row.render();
    });
    renderSummary();
  }, 1000);

  transport.serverMaxSize().then((limit) => {
    if (limit !== null) maxSize = limit;
    showSizeLimit(limit);
  });
  unfinished.refresh();
})();
