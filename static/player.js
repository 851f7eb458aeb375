/* The player page: the file's facts, a signed link, and the file itself played from it. */
"use strict";

(function () {
  const uid = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || "");
  const byId = (id) => document.getElementById(id);

  function showError(message) {
    const box = byId("error");
    box.textContent = message;
    box.hidden = !message;
  }

  async function fetchJson(url, options) {
    const headers = { ...window.ferry.authHeaders(), ...((options && options.headers) || {}) };
    const response = await fetch(url, { ...options, headers });
    if (!response.ok) {
      const text = (await response.text()).trim();
      const error = new Error(text || response.statusText);
      error.status = response.status;
      error.keySent = Boolean(headers.Authorization);
      throw error;
    }
    return response.json();
  }

  /** The file could not be described: say why in words, and ask for a key when one would help. */
  function showLoadFailure(error) {
    byId("file-name").textContent = "File not available";
    const keyForm = byId("key-form");
    if (error.status === 401 || error.status === 403) {
      showError(error.keySent
        ? "The access key was refused: enter a valid one to see this file."
        : "This server needs an access key: enter it to see this file.");
      keyForm.hidden = false;
      byId("player-key").focus();
    } else if (error.status === 404) {
      showError(error.keySent
        ? "No such file for this access key (it may belong to another key, or it was deleted)."
        : "No such file: it was deleted, or its upload never finished.");
      keyForm.hidden = true;
    } else {
      showError("Could not load the file: " + (error.status ? error.message : "the server could not be reached."));
      keyForm.hidden = true;
    }
  }

  function viewerFor(info, url) {
    const type = info.content_type;
    let media;
    if (type.startsWith("video/")) {
      media = document.createElement("video");
      media.controls = true;
      media.preload = "metadata";
      media.playsInline = true;
    } else if (type.startsWith("audio/")) {
      media = document.createElement("audio");
      media.controls = true;
      media.preload = "metadata";
    } else if (type.startsWith("image/") && type !== "image/svg+xml") {
      media = document.createElement("img");
      media.alt = info.name;
    } else {
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = "This type cannot be shown here; download it instead.";
      return note;
    }
    media.id = "media";
    media.src = url;
    return media;
  }

  async function load() {
    let info;
    try {
      info = await fetchJson("/files/" + encodeURIComponent(uid) + "/info");
    } catch (error) {
      showLoadFailure(error);
      return;
    }
    showError("");
    byId("key-form").hidden = true;
    document.title = "Ferry — " + info.name;
    byId("file-name").textContent = info.name;
    byId("file-size").textContent =
      window.ferry.formatSize(info.size) + " (" + info.size.toLocaleString("en") + " bytes)";
    byId("file-type").textContent = info.content_type;
    byId("file-sha256").textContent = info.sha256;
    byId("file-created").textContent = new Date(info.created).toLocaleString();
    byId("facts").hidden = false;

    let source = info.url;
    try {
      const link = await fetchJson("/files/" + encodeURIComponent(uid) + "/link", { method: "POST" });
      source = link.url;
      byId("signed-link").value = link.url;
      byId("link-expiry").textContent = new Date(link.expires_at).toLocaleString();
      byId("share").hidden = false;
    } catch (error) {
      showError("No signed link could be made: " + error.message);
    }
    byId("download-link").href = source;
    byId("viewer").appendChild(viewerFor(info, source));
  }

  byId("copy-link").addEventListener("click", async () => {
    const field = byId("signed-link");
    try {
      await navigator.clipboard.writeText(field.value);
      byId("copy-status").textContent = "Copied.";
    } catch (_) {
      field.select();
      byId("copy-status").textContent = "Press Ctrl+C to copy.";
    }
  });

  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    window.ferry.setApiKey(byId("player-key").value.trim());
    byId("file-name").textContent = "Loading…";
    load();
  });

  load();
})();
