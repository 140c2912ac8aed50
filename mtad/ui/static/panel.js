// mtad web panel: the little JavaScript the pages use. Everything works without it; it adds charts, confirmations
// and "select all". No inline script anywhere (the CSP forbids it): data comes from <script type="application/json">.
(function () {
  "use strict";
  var COLORS = {accepted: "#4c6ef5", delivered: "#2b8a3e", failed: "#c92a2a", opened: "#e67700", clicked: "#862e9c",
                unsubscribed: "#0b7285", complained: "#5c940d"};

  function charts(root) {
    root.querySelectorAll("figure.chart[data-source]").forEach(function (fig) {
      if (fig.dataset.drawn || typeof uPlot === "undefined") return;
      var source = document.getElementById(fig.dataset.source);
      if (!source) return;
      var data = JSON.parse(source.textContent);
      var names = data.names || Object.keys(data.series);
      var series = [{}].concat(names.map(function (name) {
        return {label: name, stroke: COLORS[name] || "#495057", width: 2, points: {show: false}};
      }));
      var rows = [data.times].concat(names.map(function (name) { return data.series[name]; }));
      var box = fig.querySelector(".plot");
      var width = function () { return Math.max(260, box.clientWidth || fig.clientWidth || 600); };
      var plot = new uPlot({width: width(), height: 220, series: series, scales: {x: {time: true}},
                            axes: [{}, {size: 50}], legend: {live: false}}, rows, box);
      fig.dataset.drawn = "1";
      window.addEventListener("resize", function () { plot.setSize({width: width(), height: 220}); });
    });
  }

  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.dataset.confirmBound) return;
      form.dataset.confirmBound = "1";
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.dataset.confirm)) { e.preventDefault(); e.stopImmediatePropagation(); }
      });
    });
  }

  function selectAll(root) {
    root.querySelectorAll("input[data-select-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        document.querySelectorAll("input[name='" + box.dataset.selectAll + "']").forEach(function (item) {
          item.checked = box.checked;
        });
      });
    });
  }

  function init(root) { charts(root); confirmations(root); selectAll(root); }
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:afterSettle", function (e) { init(e.target); });
})();
