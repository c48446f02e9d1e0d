// The usage page's daily chart: steps and model tokens per day, from the usage API
// (same origin, the session cookie). Loaded as a file: the CSP allows no inline script.
(function () {
  "use strict";
  function draw(el, rows) {
    var days = {}, kinds = ["step", "llm_input_tokens", "llm_output_tokens"];
    rows.forEach(function (r) {
      if (kinds.indexOf(r.kind) < 0 || !r.period_start) { return; }
      var t = Date.parse(r.period_start) / 1000;
      days[t] = days[t] || {};
      days[t][r.kind] = (days[t][r.kind] || 0) + r.quantity;
    });
    var xs = Object.keys(days).map(Number).sort(function (a, b) { return a - b; });
    if (!xs.length) { el.textContent = "No usage this month yet."; return; }
    var data = [xs].concat(kinds.map(function (k) {
      return xs.map(function (x) { return days[x][k] || 0; });
    }));
    var colors = ["#2f6fb0", "#c0762a", "#3c9a5f"];
    new window.uPlot({
      width: Math.max(el.clientWidth, 320), height: 240,
      series: [{}].concat(kinds.map(function (k, i) {
        return { label: k, stroke: colors[i], width: 2, scale: k === "step" ? "steps" : "tokens" };
      })),
      axes: [{}, { scale: "steps", label: "steps" }, { scale: "tokens", side: 1, label: "tokens" }]
    }, data, el);
  }
  function start() {
    var el = document.getElementById("usage-chart");
    if (!el || !window.uPlot) { return; }
    fetch(el.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (body) { draw(el, body.rows); })
      .catch(function () { el.textContent = "The chart could not be loaded; the tables below are complete."; });
  }
  document.addEventListener("DOMContentLoaded", start);
})();
