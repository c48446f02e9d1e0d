// Session page: follows the session's event stream (Server-Sent Events) and appends each
// event to the timeline; the status badge follows the events, and after progress htmx reloads
// the rest of the page (#session-live, one request at a time). The browser resumes a dropped stream by
// itself with Last-Event-ID. Text is inserted with textContent only, never as HTML.
(function () {
  "use strict";

  var KINDS = [
    "queued", "node_started", "llm_request", "llm_response", "tool_call", "tool_result",
    "approval_requested", "approval_decided", "report_created", "node_finished", "checkpoint",
    "error", "cancelled", "finished"
  ];

  function text(value) {
    if (value === null || value === undefined) { return ""; }
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function clip(value, n) {
    var s = text(value);
    n = n || 160;
    return s.length <= n ? s : s.slice(0, n - 1) + "\u2026";
  }

  // The same rules as event_summary() in enginex/runs/web.py.
  function summary(kind, data) {
    data = data || {};
    switch (kind) {
      case "queued":
        if (data.forked_from) {
          return "replay of " + text(data.forked_from).slice(0, 8) + " from checkpoint " +
            text(data.step);
        }
        return (text(data.agent) + " " + text(data.version)).trim();
      case "node_started":
        return (text(data.node_type) + " step " + text(data.step)).trim();
      case "llm_request":
        return "model " + text(data.model) + ", " + text(data.messages || 0) + " messages";
      case "llm_response": {
        var s = text(data.prompt_tokens || 0) + " prompt + " + text(data.completion_tokens || 0) +
          " completion tokens";
        if (data.tool_calls && data.tool_calls.length) {
          s += " \u2192 " + data.tool_calls.map(text).join(", ");
        }
        return s;
      }
      case "tool_call":
      case "tool_result": {
        var detail = kind === "tool_call" ? data.arguments : data.result;
        if (detail === null || detail === undefined || detail === "") { return text(data.tool); }
        return text(data.tool) + ": " + clip(detail);
      }
      case "approval_requested":
        return "waiting for the " + text(data.approver_role) + " role: " +
          (data.options || []).map(text).join(" / ");
      case "approval_decided": {
        var d = text(data.decision || data.status || "");
        if (data.status === "expired") { d = d ? "expired (" + d + ")" : "expired"; }
        if (data.comment) { d += " \u2014 \u201c" + clip(data.comment) + "\u201d"; }
        return d;
      }
      case "report_created":
        return text(data.title);
      case "node_finished":
        return text(data.outcome);
      case "checkpoint":
        return "step " + text(data.step) + " saved; next: " + (data.next_node || "end") +
          " (" + text(data.status) + ")";
      case "error":
        return clip(data.message, 400);
      case "finished":
        return text(data.status) + (data.error ? ": " + clip(data.error) : "");
      default:
        return "";
    }
  }

  function span(className, value) {
    var el = document.createElement("span");
    el.className = className;
    el.textContent = value;
    return el;
  }

  function item(event) {
    var li = document.createElement("li");
    li.className = "event kind-" + String(event.kind).replace(/[^a-z_]/g, "");
    li.setAttribute("data-seq", String(event.seq));
    li.appendChild(span("event-seq", "#" + event.seq));
    var time = document.createElement("time");
    var at = new Date(event.at);
    if (!isNaN(at.getTime())) {
      time.setAttribute("datetime", event.at);
      time.textContent = at.toISOString().slice(11, 19);
    }
    li.appendChild(time);
    li.appendChild(span("event-kind", String(event.kind).replace(/_/g, " ")));
    if (event.node_id) { li.appendChild(span("event-node mono", event.node_id)); }
    li.appendChild(span("event-summary", summary(event.kind, event.data)));
    return li;
  }

  // The status the newest event implies; null for events that do not change it.
  function statusAfter(kind, data) {
    data = data || {};
    switch (kind) {
      case "checkpoint":
      case "finished":
        return data.status ? text(data.status) : null;
      case "node_started":
        return "running";
      case "approval_requested":
        return "waiting_approval";
      case "approval_decided":
        return data.status === "expired" ? null : "running";
      case "cancelled":
        return "cancelled";
      default:
        return null;
    }
  }

  // One source of truth: the status badge shows what the newest event says, also over a
  // header fragment that was read from the database a moment before that event.
  var lastStatus = null;

  function showStatus() {
    var holder = document.getElementById("session-status");
    if (!holder || !lastStatus || holder.getAttribute("data-status") === lastStatus) { return; }
    var badge = document.createElement("span");
    badge.className = "badge status-" + lastStatus.replace(/[^a-z_]/g, "");
    badge.textContent = lastStatus.replace(/_/g, " ");
    holder.replaceChildren(badge);
    holder.setAttribute("data-status", lastStatus);
  }

  // The header, approval, graph and checkpoints are re-read from the server after progress:
  // one request at a time, and a change that arrives during a request fetches again after
  // it, so the last change is never lost (an htmx trigger on the swapped element was).
  var busy = false;
  var again = false;
  var timer = null;

  function refresh() {
    var part = document.getElementById("session-live");
    if (!part || !window.htmx) { return; }
    if (busy) { again = true; return; }
    busy = true;
    var done = function () {
      busy = false;
      showStatus();
      if (again) { again = false; refresh(); }
    };
    window.htmx.ajax("GET", part.getAttribute("data-live-url"),
                     { target: "#session-live", swap: "outerHTML" }).then(done, done);
  }

  function changed(event) {
    if (event) {
      var status = statusAfter(event.kind, event.data);
      if (status) { lastStatus = status; showStatus(); }
    }
    if (timer === null) {
      timer = window.setTimeout(function () { timer = null; refresh(); }, 250);
    }
  }

  // Other scripts ask for the same refresh with this event (the page's hook since it began).
  document.body.addEventListener("enx-session-changed", function () { changed(); });

  function follow(list) {
    var status = document.getElementById("timeline-status");
    var seen = parseInt(list.getAttribute("data-after") || "0", 10) || 0;
    var url = list.getAttribute("data-events-url") + "?after=" + seen;
    var source = new EventSource(url);

    function say(message, live) {
      if (!status) { return; }
      status.textContent = message;
      status.setAttribute("data-live", live ? "true" : "false");
    }

    function onEvent(message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (!event || typeof event.seq !== "number" || event.seq <= seen) { return; }
      seen = event.seq;
      list.appendChild(item(event));
      changed(event);
    }

    KINDS.forEach(function (kind) { source.addEventListener(kind, onEvent); });
    source.addEventListener("message", onEvent);
    source.addEventListener("end", function () {
      source.close();
      list.setAttribute("data-live", "false");
      say("Complete", false);
      changed();
    });
    source.addEventListener("access_revoked", function (message) {
      // The server ended the stream because this browser lost access: do not reconnect.
      var text = "Live updates stopped: your access ended. Sign in again.";
      try { text = JSON.parse(message.data).error.message || text; } catch (e) { /* keep */ }
      source.close();
      list.setAttribute("data-live", "false");
      say(text, false);
    });
    source.addEventListener("open", function () { say("Following live", true); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // A reconnect was refused, and the browser does not say why: ask the server whether
        // this browser is still signed in, so a lost final event still gets the right words.
        list.setAttribute("data-live", "false");
        say("Live updates stopped; reload the page to see new events.", false);
        fetch("/api/v1/me", { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then(function (response) {
            if (response.ok) { return; }
            if (response.status === 401) {  // the words of access_revoked for a sign-out
              say("Your session has ended. Sign in again.", false);
              return;
            }
            return response.json().then(function (body) {
              if (body && body.error && body.error.message) { say(body.error.message, false); }
            });
          })
          .catch(function () { /* keep the message above */ });
      } else {
        say("Reconnecting\u2026", true);
      }
    });
  }

  var list = document.getElementById("timeline");
  if (list && list.getAttribute("data-live") === "true" && window.EventSource) {
    follow(list);
  }
})();
