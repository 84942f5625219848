// Ferry's dashboard: live updates of the verdict over Server-Sent Events. The page works
// without it (forms post and reload); this only keeps the verdict current without a reload.
"use strict";
(function () {
  var text = document.getElementById("verdict-text");
  var box = document.getElementById("verdict");
  var progress = document.getElementById("progress");
  var conditions = document.getElementById("conditions");
  if (!text || !box || !window.EventSource) {
    return;
  }
  var words = { ok: "Safe:", failed: "Problem:", waiting: "Not yet:" };
  var events = new EventSource("/events");
  // The browser retries by itself after a cut; it gives up (CLOSED) only when refused, e.g.
  // after the daemon restarted and forgot the session: say so instead of showing a stale state.
  events.onerror = function () {
    if (events.readyState === EventSource.CLOSED && progress) {
      progress.textContent =
        "Live updates stopped (the daemon stopped or restarted): run `ferry dashboard` again.";
    }
  };
  events.onmessage = function (e) {
    var state;
    try {
      state = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (typeof state.verdict === "string" && text.textContent !== state.verdict) {
      text.textContent = state.verdict;
    }
    if (typeof state.tone === "string" && words[state.tone]) {
      box.className = "verdict " + state.tone;
      box.querySelector(".tone").textContent = words[state.tone];
    }
    if (progress && typeof state.progress === "string") {
      progress.textContent = state.progress;
    }
    if (conditions && typeof state.conditions === "string") {
      conditions.textContent = state.conditions;
    }
  };
})();
