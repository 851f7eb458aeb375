/* The player page: the file's facts, a signed link, and the file itself played from it. */
"use strict";

(function () {
  const uid = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || "");
  const byId = (id) => document.getElementById(id);

  function showError(message) {
    const box = byId("error");
    box.textContent = message;
    box.hidden = false;
  }

  async function fetchJson(url, options) {
    const response = await fetch(url, {
      ...options,
      headers: { ...window.ferry.authHeaders(), ...((options && options.headers) || {}) },
    });
    if (!response.ok) {
      const text = (await response.text()).trim();
      const error = new Error(text || response.statusText);
      error.status = response.status;
      throw error;
    }
    return response.json();
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
      byId("file-name").textContent = "File not available";
      showError(error.status === 401
        ? "This server needs an access key: enter it on the upload page, then come back."
        : "Could not load the file: " + error.message);
      return;
    }
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

  load();
})();
