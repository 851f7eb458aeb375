/* What one row of the upload page is made of, and how fast its bytes move. */
"use strict";

window.ferryRows = (function () {
  /** Speed is measured over this window, so that it follows changes but does not flicker. */
  const SPEED_WINDOW_MS = 5000;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** One row: name and size, a progress bar, a status line, a detail line (hidden while
   * empty) and the row's buttons. */
  function rowElements(name, size) {
    const item = element("li", "upload-item");
    const head = element("div", "upload-head");
    head.append(element("span", "file-name", name), element("span", "file-size muted", window.ferry.formatSize(size)));
    const bar = element("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Progress of " + name);
    const status = element("p", "status");
    const detail = element("p", "detail muted");
    detail.hidden = true;
    const actions = element("div", "actions");
    item.append(head, bar, status, detail, actions);
    return { item, bar, status, detail, actions };
  }

  /** Bytes per second over the last few seconds of progress. */
  class SpeedMeter {
    constructor() { this.samples = []; }
    reset() { this.samples = []; }

    add(bytes) {
      const now = performance.now();
      this.samples.push([now, bytes]);
      while (this.samples.length > 2 && now - this.samples[0][0] > SPEED_WINDOW_MS) this.samples.shift();
    }

    bytesPerSecond() {
      if (this.samples.length < 2) return null;
      const [start, first] = this.samples[0];
      const last = this.samples[this.samples.length - 1][1];
      const span = performance.now() - start;  // a stalled upload's speed falls towards 0
      return span < 500 ? null : ((last - first) * 1000) / span;
    }
  }

  return { element, rowElements, SpeedMeter };
})();
