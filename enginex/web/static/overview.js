// The organization's home: sessions per day by outcome (stacked bars) and model tokens and
// estimated cost per day, drawn with uPlot from the data-chart attributes the server rendered
// (no request of its own). Loaded as a file: the CSP allows no inline script.
(function () {
  "use strict";
  var COLORS = { "succeeded": "#12a150", "failed": "#d92d20", "waiting": "#dc8a06",
                 "in progress": "#2f5bea", "cancelled": "#8a93a6" };

  function epochs(days) {
    return days.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
  }

  function size(el) {
    return { width: Math.max(el.clientWidth, 280), height: 220 };
  }

  function bars() {
    return window.uPlot.paths && window.uPlot.paths.bars ?
      window.uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
  }

  // Half a day either side, so the first and last days' bars are drawn whole.
  var X = { time: true, range: function (u, min, max) { return [min - 43200, max + 43200]; } };

  function empty(el, text) {
    el.textContent = text;
    el.classList.add("ov-chart-empty");
  }

  // Stacked bars: plotted series k is the sum of outcomes k..last, drawn widest first, so
  // each later (shorter) one paints over it and the band left visible is outcome k's own;
  // the legend shows that own value.
  function sessions(el, data) {
    var series = data.series, n = data.days.length;
    var total = series.reduce(function (acc, s) {
      return acc + s.values.reduce(function (a, b) { return a + b; }, 0);
    }, 0);
    if (!total) { empty(el, "No sessions in these " + n + " days."); return; }
    var opts = size(el);
    opts.series = [{}].concat(series.map(function (s) {
      var color = COLORS[s.label] || "#888";
      return { label: s.label, fill: color, stroke: color, width: 0, paths: bars(),
               points: { show: false },
               value: function (u, v, si, i) { return i == null ? "—" : s.values[i]; } };
    }));
    opts.scales = { x: X,
                    y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } };
    opts.axes = [{}, { label: "sessions", size: 50 }];
    new window.uPlot(opts, [epochs(data.days)].concat(stackedFor(series, n)), el);
  }

  // Cumulative sums of the series from each one to the last: [all, all but the first, ...].
  function stackedFor(series, n) {
    var out = [];
    for (var k = 0; k < series.length; k++) {
      var sum = new Array(n).fill(0);
      for (var j = k; j < series.length; j++) {
        for (var i = 0; i < n; i++) { sum[i] += series[j].values[i]; }
      }
      out.push(sum);
    }
    return out;
  }

  function usage(el, data) {
    var tokens = data.tokens_in.map(function (v, i) { return v + data.tokens_out[i]; });
    var anything = tokens.some(Boolean) || data.cost_usd.some(Boolean);
    if (!anything) { empty(el, "No model calls in these " + data.days.length + " days."); return; }
    var opts = size(el);
    opts.series = [{},
      // Stacked as the sessions are: input + output drawn first, output over it.
      { label: "input tokens", fill: "#2f5bea", stroke: "#2f5bea", width: 0, paths: bars(),
        points: { show: false }, scale: "tokens",
        value: function (u, v, si, i) { return i == null ? "—" : data.tokens_in[i]; } },
      { label: "output tokens", fill: "#8fb0ff", stroke: "#8fb0ff", width: 0, paths: bars(),
        points: { show: false }, scale: "tokens" },
      { label: "estimated cost (USD)", stroke: "#c0762a", width: 2, scale: "usd",
        value: function (u, v) { return v == null ? "—" : "$" + v.toFixed(4); } }];
    opts.scales = { x: X, tokens: { range: function (u, min, max) { return [0, Math.max(1, max)]; } },
                    usd: { range: function (u, min, max) { return [0, Math.max(0.01, max)]; } } };
    opts.axes = [{}, { scale: "tokens", label: "tokens", size: 60 },
                 { scale: "usd", side: 1, label: "USD", size: 60, grid: { show: false },
                   values: function (u, vals) { return vals.map(function (v) { return "$" + v; }); } }];
    new window.uPlot(opts, [epochs(data.days), tokens, data.tokens_out, data.cost_usd], el);
  }

  function start() {
    if (!window.uPlot) { return; }
    [["sessions-chart", sessions], ["usage-chart", usage]].forEach(function (pair) {
      var el = document.getElementById(pair[0]);
      if (!el) { return; }
      try {
        pair[1](el, JSON.parse(el.dataset.chart));
        el.dataset.drawn = "true";
      } catch (e) {
        empty(el, "The chart could not be drawn; the figures below are complete.");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", start);
})();
