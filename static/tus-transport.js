/* How the upload page talks tus: the timeouts XHR lacks, which failures retrying can fix,
   failures in words, and the uploads this browser remembers (tus-js-client's URL storage). */
"use strict";

window.ferryTus = (function () {
  const ENDPOINT = "/files/";
  /** A body whose bytes stop moving this long is a dead connection (hotel Wi-Fi drops packets
   * silently; without this the request would hang until TCP gives up, many minutes later). */
  const SEND_IDLE_MS = 15000;
  /** How long an answer may take once the request is sent (the server may be storing a large
   * chunk in object storage). */
  const ANSWER_WAIT_MS = 120000;
  /** Answers that a later try can get past: busy, locked, rate-limited, offset moved, server. */
  const RETRYABLE_STATUSES = new Set([408, 409, 423, 425, 429]);
  const storage = tus.defaultOptions.urlStorage;

  /** One XHR request of tus-js-client's own stack, failed (so retried) when it stalls. */
  class PatientRequest {
    constructor(inner) {
      this.inner = inner;
      this.timer = null;
    }

    getMethod() { return this.inner.getMethod(); }
    getURL() { return this.inner.getURL(); }
    setHeader(name, value) { this.inner.setHeader(name, value); }
    getHeader(name) { return this.inner.getHeader(name); }
    setProgressHandler(handler) { this.inner.setProgressHandler(handler); }
    getUnderlyingObject() { return this.inner.getUnderlyingObject(); }

    abort() {
      clearTimeout(this.timer);
      return this.inner.abort();
    }

    send(body) {
      const xhr = this.inner.getUnderlyingObject();
      return new Promise((resolve, reject) => {
        const arm = (ms, reason) => {
          clearTimeout(this.timer);
          this.timer = setTimeout(() => {
            xhr.abort();
            reject(new StalledRequest(reason));
          }, ms);
        };
        const waitForAnswer = () =>
          arm(ANSWER_WAIT_MS, "no answer from the server for " + window.ferry.formatDuration(ANSWER_WAIT_MS / 1000));
        if (body && (body.size || body.byteLength)) {
          const waitForBytes = () =>
            arm(SEND_IDLE_MS, "the connection stalled (nothing moved for " + SEND_IDLE_MS / 1000 + " s)");
          xhr.upload.addEventListener("progress", waitForBytes);
          xhr.upload.addEventListener("load", waitForAnswer);
          waitForBytes();
        } else {
          waitForAnswer();
        }
        this.inner.send(body).then(
          (response) => { clearTimeout(this.timer); resolve(response); },
          (error) => { clearTimeout(this.timer); reject(error); },
        );
      });
    }
  }

  class StalledRequest extends Error {}

  /** tus-js-client's XHR stack with idle and answer timeouts (its ``httpStack`` option). */
  class PatientHttpStack {
    constructor() { this.inner = new tus.DefaultHttpStack(); }
    createRequest(method, url) { return new PatientRequest(this.inner.createRequest(method, url)); }
    getName() { return "PatientHttpStack"; }
  }

  function statusOf(error) {
    return error && error.originalResponse ? error.originalResponse.getStatus() : 0;
  }

  function serverWords(error) {
    const body = error && error.originalResponse ? error.originalResponse.getBody() || "" : "";
    return body.trim().slice(0, 300);
  }

  /** Whether trying again later can succeed (no answer at all, a 5xx, busy or locked). */
  function isRetryable(error) {
    const status = statusOf(error);
    return status === 0 || status >= 500 || RETRYABLE_STATUSES.has(status);
  }

  /** Why a request failed, in words, for a failure that is being retried. */
  function whyItFailed(error) {
    if (error && error.causingError instanceof StalledRequest) return error.causingError.message;
    const status = statusOf(error);
    if (status === 0) return "the server could not be reached";
    if (status === 423) return "the upload is busy on the server";
    if (status === 429) return "the server asks to slow down";
    if (status === 409) return "the server holds a different part of the file";
    const words = serverWords(error);
    return "the server answered " + status + (words ? ": " + words : "");
  }

  /**
   * What a failure that will not be retried means: ``kind`` is ``needs-key`` (a key can fix
   * it), ``refused`` (4xx that the same request can never get past: only Remove makes sense)
   * or ``stopped`` (the retries ran out, or the upload vanished: trying again may work).
   */
  function describeFailure(error, file, keySent) {
    const status = statusOf(error);
    const size = window.ferry.formatSize(file.size);
    const detail = serverWords(error);
    if (status === 401 || status === 403) {
      return { kind: "needs-key", message: window.ferry.authProblem(keySent), detail: "" };
    }
    if (status === 404 || status === 410) {
      return {
        kind: "stopped",
        message: "the upload is no longer on the server (it expired or was cancelled); Retry starts it again",
        detail: "",
      };
    }
    if (status === 413) return { kind: "refused", message: "too large: " + size + ", the server refused it", detail };
    if (status === 415) return { kind: "refused", message: "this type of file is not accepted here", detail };
    if (status >= 400 && status < 500 && !RETRYABLE_STATUSES.has(status)) {
      return { kind: "refused", message: "refused by the server (HTTP " + status + ")", detail };
    }
    if (status === 0 && error && error.originalRequest) {
      return { kind: "stopped", message: "stopped: " + whyItFailed(error) + ", and the retries ran out", detail: "" };
    }
    if (status !== 0) {
      return { kind: "stopped", message: "stopped: the server failed (HTTP " + status + ") on every try", detail };
    }
    // Not an HTTP failure: the file could not be read (moved, deleted or changed on disk).
    return { kind: "stopped", message: "stopped: the file could not be read", detail: String((error && error.message) || "") };
  }

  /** The server's ``Tus-Max-Size`` (tus core, OPTIONS), or null when it cannot be asked. */
  async function serverMaxSize() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    try {
      const response = await fetch(ENDPOINT, { method: "OPTIONS", signal: controller.signal });
      const value = response.headers.get("Tus-Max-Size");
      return value && /^\d+$/.test(value) && Number(value) > 0 ? Number(value) : null;
    } catch (_) {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether ``file`` is the file of the remembered upload stored under ``storageKey``. */
  async function isFileOf(file, storageKey) {
    const fingerprint = await tus.defaultOptions.fingerprint(file, { endpoint: ENDPOINT });
    return storageKey.startsWith("tus::" + fingerprint + "::");
  }

  /** Forget every remembered upload at ``url`` (after it was cancelled or is gone). */
  async function forget(url) {
    const stored = await storage.findAllUploads();
    await Promise.all(
      stored.filter((entry) => entry.uploadUrl === url).map((entry) => storage.removeUpload(entry.urlStorageKey)),
    );
  }

  /** DELETE the upload on the server (tus termination); a 404 or 410 means it is gone already. */
  async function terminate(url) {
    try {
      await tus.Upload.terminate(url, { headers: window.ferry.authHeaders(), retryDelays: [0, 1000, 3000] });
    } catch (error) {
      const status = statusOf(error);
      if (status !== 404 && status !== 410) throw error;
    }
    await forget(url);
  }

  /** Where the upload at ``url`` stands: ``{offset, length}``, ``gone``, or a ``problem``. */
  async function uploadStatus(url) {
    let response;
    try {
      response = await fetch(url, { method: "HEAD", headers: { "Tus-Resumable": "1.0.0", ...window.ferry.authHeaders() } });
    } catch (_) {
      return { problem: "the server could not be reached" };
    }
    if (response.status === 404 || response.status === 410) return { gone: true };
    if (response.status === 401 || response.status === 403) {
      return { problem: window.ferry.authProblem(Boolean(window.ferry.apiKey())) };
    }
    if (!response.ok) return { problem: "the server answered " + response.status };
    return {
      offset: Number(response.headers.get("Upload-Offset")),
      length: Number(response.headers.get("Upload-Length")),
    };
  }

  /**
   * tus-js-client's URL storage for one upload, except that an answer of 401 or 403 never
   * makes it forget the upload: tus-js-client drops a remembered upload on any 4xx to its
   * HEAD, but a missing or wrong key says nothing about the upload, which is still there.
   */
  function storageKeptOnAuthFailure(lastStatus) {
    return {
      findAllUploads: () => storage.findAllUploads(),
      findUploadsByFingerprint: (fingerprint) => storage.findUploadsByFingerprint(fingerprint),
      addUpload: (fingerprint, upload) => storage.addUpload(fingerprint, upload),
      removeUpload: (key) => ([401, 403].includes(lastStatus()) ? Promise.resolve() : storage.removeUpload(key)),
    };
  }

  return {
    ENDPOINT,
    PatientHttpStack,
    storage,
    isRetryable,
    whyItFailed,
    describeFailure,
    serverMaxSize,
    isFileOf,
    forget,
    terminate,
    uploadStatus,
    storageKeptOnAuthFailure,
  };
})();
