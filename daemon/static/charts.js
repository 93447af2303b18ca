// tracklog web console: the charts, drawn by plotly.js (SVG traces only, so the page needs
// no eval and keeps its strict script policy). This file is the series arithmetic (EMA
// smoothing, min-max decimation, group mean and band) and the Plotly figures; app.js owns
// the data and decides when to draw. Exposed as window.TracklogCharts.
"use strict";

(function () {
  // Colours distinct on light and dark backgrounds (Tableau 10, then 10 more).
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                   "#17becf", "#bcbd22", "#393b79", "#ad494a"];
  const colour = (i) => PALETTE[i % PALETTE.length];

  function rgba(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${alpha})`;
  }

  // -- series arithmetic ----------------------------------------------------------------

  /** Exponential moving average with TensorBoard's debiasing (the first points are not pulled to 0). */
  function ema(values, weight) {
    if (!weight) return values;
    const out = new Array(values.length);
    let last = 0, n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) { out[i] = v; continue; }
      last = last * weight + (1 - weight) * v;
      n++;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  /** Indexes keeping each bucket's lowest and highest point, so spikes survive (as the daemon's tiers do). */
  function minMaxIndex(values, maxPoints) {
    const n = values.length;
    if (n <= maxPoints) return null;
    const buckets = Math.max(1, maxPoints >> 1), size = Math.ceil(n / buckets), keep = [];
    for (let b = 0; b < n; b += size) {
      let lo = -1, hi = -1;
      for (let i = b; i < Math.min(n, b + size); i++) {
        const v = values[i];
        if (!Number.isFinite(v)) continue;
        if (lo < 0 || v < values[lo]) lo = i;
        if (hi < 0 || v > values[hi]) hi = i;
      }
      if (lo < 0) keep.push(b);
      else if (lo === hi) keep.push(lo);
      else keep.push(Math.min(lo, hi), Math.max(lo, hi));
    }
    return keep;
  }

  /** Thin a series held by the page in place when live points made it much longer than drawn. */
  function decimate(series, maxPoints) {
    const keep = minMaxIndex(series.values, maxPoints);
    if (!keep) return;
    for (const k of ["steps", "values", "epochs", "ts"]) {
      const col = series[k];
      if (col) series[k] = keep.map((i) => col[i]);
    }
    series.downsampled = true;
  }

  /** The x column of a series for an axis: step, epoch or time (ms, for a date axis). */
  function xOf(series, axis) {
    if (axis === "epoch") return series.epochs || series.steps;
    if (axis === "time") return series.ts.map((t) => t * 1000);
    return series.steps;
  }

  /** A series with its zoomed-in finer points spliced in over the steps they cover. */
  function withZoom(series, zoom) {
    if (!zoom || !zoom.series.steps.length) return series;
    const out = { steps: [], values: [], epochs: [], ts: [] };
    const take = (src, i) => { for (const k in out) out[k].push(src[k] ? src[k][i] : null); };
    let i = 0;
    for (; i < series.steps.length && series.steps[i] < zoom.from; i++) take(series, i);
    for (let j = 0; j < zoom.series.steps.length; j++) take(zoom.series, j);
    while (i < series.steps.length && series.steps[i] <= zoom.to) i++;
    for (; i < series.steps.length; i++) take(series, i);
    return out;
  }

  /** Linear interpolation of (xs, ys) at x, or NaN outside its range; xs ascending. */
  function interpolate(xs, ys, x, from) {
    let i = from.i;
    while (i < xs.length - 1 && xs[i + 1] < x) i++;
    from.i = i;
    if (!xs.length || x < xs[0] || x > xs[xs.length - 1]) return NaN;
    if (xs[i] === x || i === xs.length - 1) return ys[i];
    const x0 = xs[i], x1 = xs[i + 1];
    return x1 === x0 ? ys[i] : ys[i] + (ys[i + 1] - ys[i]) * (x - x0) / (x1 - x0);
  }

  /** Mean, min and max of several runs' lines on a common grid of x (each within its own range). */
  function groupBand(lines, gridPoints) {
    let lo = Infinity, hi = -Infinity;
    for (const { x } of lines) if (x.length) { lo = Math.min(lo, x[0]); hi = Math.max(hi, x[x.length - 1]); }
    if (!(hi >= lo)) return { x: [], mean: [], min: [], max: [] };
    const n = hi === lo ? 1 : gridPoints;
    const out = { x: [], mean: [], min: [], max: [] };
    const cursors = lines.map(() => ({ i: 0 }));
    for (let g = 0; g < n; g++) {
      const x = n === 1 ? lo : lo + (hi - lo) * g / (n - 1);
      let sum = 0, count = 0, mn = Infinity, mx = -Infinity;
      lines.forEach((line, k) => {
        const y = interpolate(line.x, line.y, x, cursors[k]);
        if (!Number.isFinite(y)) return;
        sum += y; count++; mn = Math.min(mn, y); mx = Math.max(mx, y);
      });
      if (!count) continue;
      out.x.push(x); out.mean.push(sum / count); out.min.push(mn); out.max.push(mx);
    }
    return out;
  }

  // -- figures --------------------------------------------------------------------------

  function theme() {
    const css = getComputedStyle(document.documentElement);
    const v = (name) => css.getPropertyValue(name).trim();
    return { fg: v("--fg"), muted: v("--muted"), line: v("--line"), card: v("--card") };
  }

  function layout(opts, t) {
    return {
      margin: { l: 58, r: 12, t: 6, b: 34 },
      hovermode: "x unified",
      hoverlabel: { bgcolor: t.card, bordercolor: t.line, font: { color: t.fg, size: 11 } },
      showlegend: false,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: t.fg, size: 11, family: "system-ui, sans-serif" },
      xaxis: { type: opts.xAxis === "time" ? "date" : "linear", gridcolor: t.line, linecolor: t.line,
               zeroline: false },
      // On a log axis, ticks at 1, 2 and 5 of each decade (not every digit).
      yaxis: Object.assign({ type: opts.log ? "log" : "linear", gridcolor: t.line, linecolor: t.line, zeroline: false,
                             exponentformat: "e" }, opts.log ? { dtick: "D2" } : {}),
      // Zoom survives redraws while points stream in; a new axis choice starts afresh.
      uirevision: opts.xAxis + "|" + (opts.log ? "log" : "lin") + "|" + opts.revision,
      datarevision: opts.datarevision,
      dragmode: "zoom",
    };
  }

  // Not `responsive`: app.js resizes each chart when its box changes size (window or drag).
  const CONFIG = { displaylogo: false, doubleClick: "reset",
                   modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };

  /**
   * Draw one metric's chart: a line per entry (run), or per group the mean with a min-max
   * band. entries: [{label, colour, series, zoom, group}]; opts: {xAxis, smoothing, log,
   * aggregate, revision, datarevision}. Returns the count of raw points drawn.
   */
  function drawMetric(div, entries, opts) {
    const t = theme();
    const traces = [];
    let drawn = 0;
    const smooth = opts.smoothing > 0;
    // A line never needs more points than the plot has pixels across (each bucket of two
    // pixels keeps its lowest and highest point): SVG cost grows with points, not pixels.
    const cap = Math.max(200, Math.round(div.clientWidth || 600));
    const lineOf = (e) => {
      const s = withZoom(e.series, e.zoom);
      drawn += s.values.length;
      let x = xOf(s, opts.xAxis);
      let y = opts.log ? s.values.map((v) => (v > 0 ? v : null)) : s.values;
      let smoothed = smooth ? ema(y, opts.smoothing) : y;
      const keep = e.zoom ? null : minMaxIndex(smoothed, cap);
      if (keep) {
        x = keep.map((i) => x[i]);
        if (smoothed !== y) smoothed = keep.map((i) => smoothed[i]);
        y = keep.map((i) => y[i]);
        if (!smooth) smoothed = y;
      }
      return { x, y, smoothed };
    };
    if (opts.aggregate) {
      const groups = new Map();
      for (const e of entries) {
        if (!groups.has(e.group)) groups.set(e.group, { label: e.group, colour: e.colour, lines: [] });
        groups.get(e.group).lines.push(lineOf(e));
      }
      for (const g of groups.values()) {
        const band = groupBand(g.lines.map((l) => ({ x: l.x, y: l.smoothed })), 400);
        const fill = rgba(g.colour, 0.18);
        traces.push({ type: "scatter", mode: "lines", x: band.x, y: band.min, line: { width: 0 },
                      hoverinfo: "skip", name: g.label + " min" });
        traces.push({ type: "scatter", mode: "lines", x: band.x, y: band.max, line: { width: 0 }, fill: "tonexty",
                      fillcolor: fill, hoverinfo: "skip", name: g.label + " max" });
        traces.push({ type: "scatter", mode: "lines", x: band.x, y: band.mean, name: g.label + " (mean of " + g.lines.length + ")",
                      line: { color: g.colour, width: 2 }, meta: "mean" });
      }
    } else {
      for (const e of entries) {
        const l = lineOf(e);
        const one = l.x.length === 1;
        if (smooth) {
          traces.push({ type: "scatter", mode: one ? "markers" : "lines", x: l.x, y: l.y, name: e.label + " (raw)",
                        line: { color: e.colour, width: 1 }, opacity: 0.25, hoverinfo: "skip", meta: "raw" });
        }
        traces.push({ type: "scatter", mode: one ? "markers" : "lines", x: l.x, y: l.smoothed, name: e.label,
                      line: { color: e.colour, width: smooth ? 2 : 1.5 }, meta: smooth ? "smoothed" : "raw",
                      hovertemplate: "%{y:.5g}" });
      }
    }
    window.Plotly.react(div, traces, layout(opts, t), CONFIG);
    return drawn;
  }

  /** The x range a zoom asked for, from a plotly_relayout event: [a, b], "reset", or null. */
  function zoomOf(ev) {
    if (ev["xaxis.autorange"] || ev.autosize) return "reset";
    if ("xaxis.range[0]" in ev) return [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
    if (Array.isArray(ev["xaxis.range"])) return ev["xaxis.range"];
    return null;
  }

  /**
   * Parallel coordinates of config keys against a metric, in SVG: an axis per key (scaled
   * to its own range; text values in sorted order), the metric last, a line per run
   * coloured by the metric. runs: [{label, config (flat), metric}].
   */
  function drawParallel(div, runs, keys, metricName) {
    const t = theme();
    const axes = keys.map((k) => {
      const values = runs.map((r) => r.config[k]);
      const numeric = values.every((v) => v == null || typeof v === "number");
      if (numeric) {
        const nums = values.filter((v) => typeof v === "number");
        const lo = Math.min(...nums), hi = Math.max(...nums);
        // Keys spanning decades (learning rates, weight decays) on a log scale.
        const log = lo > 0 && hi / lo >= 100;
        const f = log ? Math.log10 : (v) => v;
        const pos = (v) => (typeof v !== "number" || (log && v <= 0) ? null : hi === lo ? 0.5 : (f(v) - f(lo)) / (f(hi) - f(lo)));
        return { name: log ? k + " (log)" : k, key: k, pos, ticks: nums.length <= 6 ? [...new Set(nums)].map((v) => [pos(v), v]) : [[0, lo], [1, hi]] };
      }
      const cats = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
      const pos = (v) => (cats.length === 1 ? 0.5 : cats.indexOf(JSON.stringify(v)) / (cats.length - 1));
      return { name: k, key: k, pos, ticks: cats.slice(0, 12).map((c) => [pos(JSON.parse(c)), c.replace(/^"|"$/g, "")]) };
    });
    const metricValues = runs.map((r) => r.metric).filter(Number.isFinite);
    const mLo = Math.min(...metricValues), mHi = Math.max(...metricValues);
    axes.push({ name: metricName, key: metricName, pos: (v) => (!Number.isFinite(v) ? null : mHi === mLo ? 0.5 : (v - mLo) / (mHi - mLo)),
                ticks: [[0, mLo], [1, mHi]] });
    const scale = (v) => { // blue (low) to orange (high)
      const f = !Number.isFinite(v) || mHi === mLo ? 0.5 : (v - mLo) / (mHi - mLo);
      const a = [78, 121, 167], b = [242, 142, 43];
      return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * f)).join(",")})`;
    };
    const traces = runs.map((r) => ({
      type: "scatter", mode: "lines+markers", x: axes.map((_, i) => i),
      y: axes.map((a, i) => a.pos(i === axes.length - 1 ? r.metric : r.config[a.key])),
      name: r.label, line: { color: scale(r.metric), width: 2 }, marker: { size: 5 },
      text: axes.map((a, i) => a.key + " = " + (i === axes.length - 1 ? r.metric : JSON.stringify(r.config[a.key]))),
      hovertemplate: "%{text}<extra>" + r.label.replace(/[<>]/g, "") + "</extra>", connectgaps: false,
    }));
    // The colour scale, as a marker trace whose colour bar is the legend of the lines.
    traces.push({ type: "scatter", mode: "markers", x: [0], y: [null], hoverinfo: "skip", showlegend: false,
                  marker: { color: [mLo, mHi], colorscale: [[0, "rgb(78,121,167)"], [1, "rgb(242,142,43)"]],
                            cmin: mLo, cmax: mHi, showscale: Number.isFinite(mLo),
                            colorbar: { title: { text: metricName }, thickness: 10 } } });
    const annotations = [];
    axes.forEach((a, i) => {
      for (const [p, label] of a.ticks) {
        annotations.push({ x: i, y: p, text: typeof label === "number" ? String(+label.toPrecision(4)) : String(label).slice(0, 24),
                           showarrow: false, xanchor: "left", xshift: 4, font: { size: 10, color: t.muted } });
      }
    });
    window.Plotly.react(div, traces, {
      margin: { l: 20, r: 20, t: 10, b: 60 }, showlegend: false, hovermode: "closest",
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: t.fg, size: 11 },
      xaxis: { tickvals: axes.map((_, i) => i), ticktext: axes.map((a) => a.name), showgrid: true, gridcolor: t.muted,
               zeroline: false, range: [-0.2, axes.length - 0.6], fixedrange: true },
      yaxis: { visible: false, range: [-0.05, 1.05], fixedrange: true },
      annotations,
    }, { displaylogo: false, responsive: true });
  }

  window.TracklogCharts = { colour, ema, minMaxIndex, decimate, xOf, withZoom, groupBand, drawMetric, zoomOf,
                            drawParallel };
})();
