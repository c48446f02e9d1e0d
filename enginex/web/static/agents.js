// Builder and admin pages (agents, members, API keys, LLM settings). Progressive enhancement
// only: every form on these pages works without this file. No inline code (CSP).
(function () {
  "use strict";

  // --- package upload: a drop zone that fills the form's file field -------------------------
  function zoneParts(zone) {
    var input = document.getElementById(zone.getAttribute("for"));
    var label = zone.querySelector("[data-dropzone-file]");
    return { input: input, label: label };
  }

  function showChosen(zone) {
    var parts = zoneParts(zone);
    if (!parts.input || !parts.label) { return; }
    var file = parts.input.files && parts.input.files[0];
    parts.label.textContent = file ? "Selected: " + file.name : "";
    zone.classList.toggle("has-file", Boolean(file));
  }

  function zoneOf(event) {
    return event.target && event.target.closest ? event.target.closest("[data-dropzone]") : null;
  }

  document.addEventListener("dragover", function (event) {
    var zone = zoneOf(event);
    if (!zone) { return; }
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });

  document.addEventListener("dragleave", function (event) {
    var zone = zoneOf(event);
    if (zone && !zone.contains(event.relatedTarget)) { zone.classList.remove("dragging"); }
  });

  document.addEventListener("drop", function (event) {
    var zone = zoneOf(event);
    if (!zone) { return; }
    event.preventDefault();
    zone.classList.remove("dragging");
    var parts = zoneParts(zone);
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!parts.input || !files || files.length === 0) { return; }
    if (files.length > 1) {
      parts.label.textContent = "Drop one package file at a time.";
      return;
    }
    parts.input.files = files;
    showChosen(zone);
  });

  document.addEventListener("change", function (event) {
    var input = event.target;
    if (!input || input.type !== "file" || !input.id) { return; }
    var zone = document.querySelector('[data-dropzone][for="' + input.id + '"]');
    if (zone) { showChosen(zone); }
  });

  // --- htmx forms: show the server's validation errors (422/409/403) instead of nothing ----
  // htmx does not swap 4xx responses by default; forms marked data-swap-errors re-render the
  // page's main element with the server's messages, exactly as without JavaScript.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var source = event.detail.requestConfig && event.detail.requestConfig.elt;
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    if (source && source.closest && source.closest("[data-swap-errors]") &&
        status >= 400 && status < 500) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
