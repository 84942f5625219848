// Ferry's dashboard: live updates over Server-Sent Events. The page works without it (forms
// post and reload); this keeps the verdict, the progress, the conditions and what is observed,
// the library's size, the waiting and failed lists, the sparkline and the history current
// without a reload.
"use strict";
(function () {
  var text = document.getElementById("verdict-text");
  var box = document.getElementById("verdict");
  var progress = document.getElementById("progress");
  var conditions = document.getElementById("conditions");
  if (!text || !box || !window.EventSource) {
    return;
  }
  // Parts sent as markup, replaced whole when they change. The markup is the server's own,
  // every outside string escaped there; parsed inert (DOMParser runs no script, and the page's
  // CSP allows none inline) and moved in node by node.
  var parts = ["library", "observed", "lists", "history", "sparkline"];
  var shown = {};
  function replace(id, markup) {
    var el = document.getElementById(id);
    if (!el || shown[id] === markup) {
      return;
    }
    shown[id] = markup;
    var doc = new DOMParser().parseFromString(markup, "text/html");
    el.replaceChildren.apply(el, Array.prototype.slice.call(doc.body.childNodes));
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
    parts.forEach(function (id) {
      if (typeof state[id] === "string") {
        replace(id, state[id]);
      }
    });
  };
})();
