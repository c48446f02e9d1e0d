// EngineX dashboard glue. No inline scripts anywhere (CSP: script-src 'self').
(function () {
  "use strict";
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  // Every htmx request carries the CSRF token as a header.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });
  // On a narrow screen the sections scroll sideways: bring the current one into view.
  document.addEventListener("DOMContentLoaded", function () {
    var current = document.querySelector('nav.sections [aria-current="page"]');
    var strip = current && current.closest("ul");
    if (strip && strip.scrollWidth > strip.clientWidth) {
      strip.scrollLeft += current.getBoundingClientRect().left - strip.getBoundingClientRect().left - 16;
    }
  });
  // Copy buttons: <button data-copy="#element-id">Copy</button>
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) { return; }
    navigator.clipboard.writeText(source.value || source.textContent || "").then(function () {
      button.textContent = "Copied";
    });
  });
})();
