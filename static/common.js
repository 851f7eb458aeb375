/* Shared by the Ferry pages: the optional access key, and sizes, speeds and durations in words. */
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

  /** What a 401 or 403 means to the person: no key was sent, or the one sent was refused. */
  function authProblem(keySent) {
    return keySent ? "the access key was refused" : "this server needs an access key";
  }

  function formatSize(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    // A no-break space keeps "4.8 MiB" on one line when a status wraps on a narrow screen.
    if (unit === 0) return bytes + (bytes === 1 ? "\u00a0byte" : "\u00a0bytes");
    return value.toFixed(value < 100 ? 1 : 0) + "\u00a0" + units[unit];
  }

  function formatSpeed(bytesPerSecond) {
    return formatSize(Math.round(bytesPerSecond)) + "/s";
  }

  /** "4 s", "2 min 5 s", "1 h 3 min": as precise as a person reads a countdown. */
  function formatDuration(seconds) {
    const total = Math.max(0, Math.ceil(seconds));
    if (total < 60) return total + "\u00a0s";
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return minutes + "\u00a0min" + (total % 60 ? " " + (total % 60) + "\u00a0s" : "");
    const hours = Math.floor(minutes / 60);
    return hours + "\u00a0h" + (minutes % 60 ? " " + (minutes % 60) + "\u00a0min" : "");
  }

  return { apiKey, setApiKey, authHeaders, authProblem, formatSize, formatSpeed, formatDuration };
})();
