// Session page: the live part (#session-live, with the trace) is replaced by htmx whenever
// the session progresses; the steps, inputs and outputs the reader had opened stay open.
(function () {
  "use strict";
  var opened = [];
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (!target || target.id !== "session-live") { return; }
    opened = Array.prototype.map.call(
      target.querySelectorAll("details[open][id^='trace-']"), function (d) { return d.id; });
  });
  document.addEventListener("htmx:afterSettle", function () {
    opened.forEach(function (id) {
      var details = document.getElementById(id);
      if (details) { details.open = true; }
    });
    opened = [];
  });
})();
