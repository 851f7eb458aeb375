/* Shared by the Ferry pages: the optional access key and human-readable sizes. */
"use strict";

window.ferry = (function () {
  const KEY_STORAGE = "ferry.apiKey";

  function apiKey() {
    try {
      return window.localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function setApiKey(value) {
    try {
      if (value) window.localStorage.setItem(KEY_STORAGE, value);
      else window.localStorage.removeItem(KEY_STORAGE);
    } catch (_) { /* storage disabled: the key lives for this page only */ }
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function formatSize(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? bytes + " bytes" : value.toFixed(value < 10 ? 1 : 0) + " " + units[unit];
  }

  return { apiKey, setApiKey, authHeaders, formatSize };
})();
