/* The uploads this browser started earlier and did not finish (tus-js-client's URL storage),
   with how far each got on the server. A browser cannot read a file again by itself: the
   person picks it again, and it is matched to its upload by tus-js-client's fingerprint. */
"use strict";

/**
 * The "Not finished" list: ``page.list`` and ``page.section`` are its elements, ``page.inUse()``
 * the upload URLs the page is working on now, ``page.resume(file, storageKey)`` goes on with
 * one.
 */
window.ferryUnfinished = function (page) {
  const transport = window.ferryTus;
  const { element, rowElements } = window.ferryRows;
  const { formatSize } = window.ferry;

  return {
    items: new Map(),

    async refresh() {
      const stored = await transport.storage.findAllUploads().catch(() => []);
      const inUse = new Set(page.inUse());
      this.items.forEach((item) => item.remove());
      this.items.clear();
      for (const entry of stored) {
        if (entry.uploadUrl && !inUse.has(entry.uploadUrl)) this.show(entry);
      }
      this.sync();
    },

    show(entry) {
      const name = (entry.metadata && entry.metadata.filename) || "unnamed file";
      const view = rowElements(name, entry.size);
      view.item.classList.add("unfinished-item");
      view.item.dataset.state = "unfinished";
      view.status.textContent = "Checking how far it got…";
      const started = entry.creationTime ? " · started " + new Date(entry.creationTime).toLocaleString() : "";
      const picker = element("label", "button-like", "Resume…");
      const input = element("input", "visually-hidden");
      input.type = "file";
      input.setAttribute("aria-label", "Pick " + name + " again to resume it");
      picker.appendChild(input);
      input.addEventListener("change", () => {
        if (input.files.length) this.resumeWith(entry, input.files[0], view, name);
        input.value = "";
      });
      const discard = element("button", "action-discard", "Discard");
      discard.type = "button";
      discard.setAttribute("aria-label", "Discard " + name);
      discard.addEventListener("click", () => this.discard(entry, view));
      view.actions.append(picker, discard);
      page.list.appendChild(view.item);
      this.items.set(entry.urlStorageKey, view.item);
      transport.uploadStatus(entry.uploadUrl).then((status) => {
        if (status.gone) {
          transport.storage.removeUpload(entry.urlStorageKey);
          this.drop(entry.urlStorageKey);
        } else if (status.problem) {
          view.status.textContent = "Cannot tell how far it got: " + status.problem + started;
        } else {
          view.bar.value = status.length ? (status.offset / status.length) * 100 : 0;
          view.status.textContent = formatSize(status.offset) + " of " + formatSize(status.length) + " sent" + started;
        }
      });
    },

    async resumeWith(entry, file, view, name) {
      if (!(await transport.isFileOf(file, entry.urlStorageKey))) {
        view.detail.textContent = "That is not the same file: this upload is of " + name + " (" +
          formatSize(entry.size) + "), unchanged since it started; you picked " + file.name +
          " (" + formatSize(file.size) + ").";
        view.detail.classList.add("error");
        view.detail.hidden = false;
        return;
      }
      this.drop(entry.urlStorageKey);
      page.resume(file, entry.urlStorageKey);
    },

    async discard(entry, view) {
      view.status.textContent = "Discarding…";
      try {
        await transport.terminate(entry.uploadUrl);
      } catch (error) {
        view.status.textContent = "Could not discard it: " + transport.whyItFailed(error);
        return;
      }
      this.drop(entry.urlStorageKey);
    },

    drop(storageKey) {
      const item = this.items.get(storageKey);
      if (item) item.remove();
      this.items.delete(storageKey);
      this.sync();
    },

    sync() {
      page.section.hidden = this.items.size === 0;
    },
  };
};
