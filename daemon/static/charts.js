// tracklog web console: the charts, drawn by uPlot (canvas; vendored in daemon/static with
// its licence: about 50 KB, where plotly.js is 4.8 MB to compile and redraws a 20-line SVG
// chart in 25 to 130 ms against uPlot's 1 to 5 ms). This file is the series arithmetic (EMA
// smoothing, min-max decimation, group mean and band) and the figures; app.js owns the data
// and decides when to draw. Exposed as window.TracklogCharts.
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

  /** The x column of a series for an axis: step, epoch or time (seconds, as uPlot's time scale takes them). */
  function xOf(series, axis) {
    if (axis === "epoch") return series.epochs || series.steps;
    if (axis === "time") return series.ts;
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

  const short = (v) => {
    if (v == null || !Number.isFinite(v)) return v == null ? "" : String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
    const a = Math.abs(v);
    return a >= 1e-3 && a < 1e6 ? String(+v.toPrecision(5)) : v.toExponential(2);
  };

  /** What a chart keeps on its div: the uPlot instance, what it was built for, its zoom. */
  function stateOf(div) {
    if (!div._chart) div._chart = { u: null, key: "", rev: "", zoom: null, userZoom: false, onZoom: null, tip: null, traces: [] };
    return div._chart;
  }

  function sizeOf(div, less) {
    return { width: Math.max(120, Math.floor(div.clientWidth || 400)),
             height: Math.max(80, Math.floor((div.clientHeight || 240) - (less || 0))) };
  }

  /** The traces on one shared x column, as uPlot draws them (a run's missing x is spanned over). */
  function align(traces) {
    const tables = traces.map((tr) => {
      const xs = [], ys = [];
      for (let i = 0; i < tr.x.length; i++) {
        const x = tr.x[i], y = tr.y[i];
        if (x == null || !Number.isFinite(x)) continue;
        xs.push(x);
        ys.push(y == null || !Number.isFinite(y) ? null : y);
      }
      return [xs, ys];
    });
    if (!tables.length) return [[]];
    const first = tables[0][0];
    if (tables.every(([xs]) => xs.length === first.length && xs.every((x, i) => x === first[i]))) {
      return [first, ...tables.map(([, ys]) => ys)];
    }
    // The union of every x, sorted, then each line placed on it by a walk of both (each
    // line's x ascends): a typed-array sort and no hashing, as this runs on every live redraw.
    let total = 0;
    for (const [xs] of tables) total += xs.length;
    const all = new Float64Array(total);
    let at = 0;
    for (const [xs] of tables) { all.set(xs, at); at += xs.length; }
    all.sort();
    const union = [];
    for (let i = 0; i < total; i++) if (i === 0 || all[i] !== all[i - 1]) union.push(all[i]);
    const out = [union];
    for (const [xs, ys] of tables) {
      const column = new Array(union.length).fill(undefined);  // undefined: no point here, spanned
      let j = 0, ascending = true;
      for (let i = 0; i < xs.length; i++) {
        if (i && xs[i] < xs[i - 1]) { ascending = false; break; }
        while (union[j] < xs[i]) j++;
        column[j] = ys[i];
      }
      if (!ascending) {  // epochs or times out of order: place each by search
        column.fill(undefined);
        for (let i = 0; i < xs.length; i++) {
          let lo = 0, hi = union.length - 1;
          while (lo < hi) { const mid = (lo + hi) >> 1; if (union[mid] < xs[i]) lo = mid + 1; else hi = mid; }
          column[lo] = ys[i];
        }
      }
      out.push(column);
    }
    return out;
  }

  function axisStyle(t, extra) {
    return Object.assign({ stroke: t.muted, grid: { stroke: t.line, width: 1 }, ticks: { stroke: t.line, width: 1, size: 4 },
                           font: "11px system-ui, sans-serif" }, extra);
  }

  /** The value of series `i` nearest to row `idx` within its own range (null outside it). */
  function nearest(column, idx) {
    const n = column.length, reach = Math.min(n, 5000);
    let left = null, right = null;
    for (let d = 0; d < reach && (left === null || right === null); d++) {
      if (left === null && idx - d >= 0 && column[idx - d] != null) left = d;
      if (right === null && idx + d < n && column[idx + d] != null) right = d;
    }
    if (left === null || right === null) return left === 0 || right === 0 ? column[idx] : null;
    return column[left <= right ? idx - left : idx + right];
  }

  /** The hover readout: the x under the cursor and every line's value there. */
  function readout(div, st, u) {
    const idx = u.cursor.idx;
    let tip = st.tip;
    if (idx == null || u.cursor.left == null || u.cursor.left < 0) { if (tip) tip.hidden = true; return; }
    if (!tip) {
      tip = st.tip = document.createElement("div");
      tip.className = "readout";
      tip.setAttribute("role", "status");
      div.append(tip);
    }
    const rows = [];
    st.traces.forEach((tr, i) => {
      if (!tr.hover) return;
      const v = st.valueAt ? st.valueAt(i, idx) : nearest(u.data[i + 1], idx);
      if (v == null) return;
      const row = document.createElement("div");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = tr.colour;
      const value = document.createElement("b");
      value.textContent = typeof v === "number" ? short(v) : String(v);
      row.append(swatch, " " + tr.name + " ", value);
      rows.push(row);
    });
    const head = document.createElement("div");
    head.className = "muted";
    head.textContent = st.xLabel(u.data[0][idx]);
    tip.replaceChildren(head, ...rows);
    tip.hidden = false;
    const over = u.over.getBoundingClientRect(), box = div.getBoundingClientRect();
    const x = over.left - box.left + u.cursor.left, right = x > div.clientWidth / 2;
    tip.style.left = right ? "" : (x + 14) + "px";
    tip.style.right = right ? (div.clientWidth - x + 14) + "px" : "";
    tip.style.top = Math.max(0, over.top - box.top + 4) + "px";
  }

  /** Zoom to an x range (null: the whole series), telling app.js when a person asked for it. */
  function setZoom(div, range, asked) {
    const st = stateOf(div);
    if (!st.u) return;
    st.zoom = range;
    if (range) st.u.setScale("x", { min: range[0], max: range[1] });
    else st.u.setData(st.u.data, true);
    if (asked && st.onZoom) st.onZoom(range || "reset");
  }

  /** Arrow keys pan a zoomed chart by a fifth of its range, + and - zoom, 0 or Escape resets. */
  function onKey(div, e) {
    const st = stateOf(div);
    if (!st.u || !st.u.data[0].length) return;
    const xs = st.u.data[0], lo = st.u.scales.x.min, hi = st.u.scales.x.max, span = hi - lo;
    let range = null;
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      const shift = (e.key === "ArrowLeft" ? -1 : 1) * span / 5;
      range = [lo + shift, hi + shift];
    } else if (e.key === "+" || e.key === "=") range = [lo + span / 4, hi - span / 4];
    else if (e.key === "-") range = [lo - span / 2, hi + span / 2];
    else if (e.key === "0" || e.key === "Escape") { e.preventDefault(); setZoom(div, null, true); return; }
    else return;
    e.preventDefault();
    if (range[0] <= xs[0] && range[1] >= xs[xs.length - 1]) { setZoom(div, null, true); return; }
    setZoom(div, range, true);
  }

  /**
   * Draw traces on the div's uPlot chart: made anew when what it shows changes (runs, axes,
   * smoothing, theme), else given the new data only (a cheap redraw, so live charts can
   * follow every frame). A zoom survives redraws until the axes or the runs change.
   */
  function render(div, traces, bands, opts, xLabel) {
    const t = theme();
    const st = stateOf(div);
    const rev = opts.xAxis + "|" + (opts.log ? "log" : "lin") + "|" + opts.revision;
    if (rev !== st.rev) { st.rev = rev; st.zoom = null; }
    const key = JSON.stringify([rev, t, traces.map((tr) => [tr.name, tr.colour, tr.opacity, tr.width, tr.points]), bands]);
    const data = align(traces);
    st.traces = traces;
    st.xLabel = xLabel;
    div.traces = traces;  // what is drawn, for the tests and for a person at the console
    if (st.u && st.key === key) {
      st.u.setData(data, !st.zoom);
      if (st.zoom) st.u.setScale("x", { min: st.zoom[0], max: st.zoom[1] });
    } else {
      if (st.u) st.u.destroy();
      st.key = key;
      st.u = new window.uPlot({
        ...sizeOf(div),
        legend: { show: false },
        cursor: { drag: { x: true, y: false, setScale: true }, points: { size: 6 },
                  // A double click resets the zoom through setZoom, so app.js hears of it.
                  bind: { dblclick: () => () => { setZoom(div, null, true); return null; } } },
        scales: { x: { time: opts.xAxis === "time" }, y: opts.log ? { distr: 3, log: 10 } : {} },
        axes: [axisStyle(t, {}), axisStyle(t, { size: 56, values: (u, splits) => splits.map(short) })],
        series: [{}, ...traces.map((tr) => ({
          label: tr.name, stroke: tr.opacity < 1 ? rgba(tr.colour, tr.opacity) : tr.colour, width: tr.width,
          spanGaps: true, points: { show: !!tr.points, size: 6, fill: tr.colour }, fill: tr.fill,
        }))],
        bands,
        hooks: {
          setSelect: [() => { st.userZoom = true; }],
          setScale: [(u, scale) => {
            if (scale !== "x" || !st.userZoom) return;
            st.userZoom = false;
            st.zoom = [u.scales.x.min, u.scales.x.max];
            if (st.onZoom) st.onZoom(st.zoom);
          }],
          setCursor: [(u) => readout(div, st, u)],
        },
      }, data, div);
      if (st.zoom) st.u.setScale("x", { min: st.zoom[0], max: st.zoom[1] });
      if (!div.keysBound) {
        div.keysBound = true;
        div.tabIndex = 0;
        div.addEventListener("keydown", (e) => onKey(div, e));
        div.addEventListener("mouseleave", () => { if (st.tip) st.tip.hidden = true; });
      }
    }
    const u = st.u;
    div.axes = { x: opts.xAxis === "time" ? "date" : "linear", y: opts.log ? "log" : "linear",
                 get range() { return [u.scales.x.min, u.scales.x.max]; } };
  }

  /**
   * Draw one metric's chart: a line per entry (run), or per group the mean with a min-max
   * band. entries: [{label, colour, series, zoom, group}]; opts: {xAxis, smoothing, log,
   * aggregate, revision}. Returns the count of raw points drawn.
   */
  function drawMetric(div, entries, opts) {
    const traces = [], bands = [];
    let drawn = 0;
    const smooth = opts.smoothing > 0;
    // A line never needs more points than the plot has pixels across (each bucket of two
    // pixels keeps its lowest and highest point).
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
        const edge = { colour: g.colour, opacity: 0.35, width: 1, x: band.x, hover: false };
        traces.push(Object.assign({ name: g.label + " min", meta: "min", y: band.min }, edge));
        traces.push(Object.assign({ name: g.label + " max", meta: "max", y: band.max }, edge));
        // uPlot numbers series from 1 (0 is x): fill between this group's max and min.
        bands.push({ series: [traces.length, traces.length - 1], fill: rgba(g.colour, 0.18) });
        traces.push({ name: g.label + " (mean of " + g.lines.length + ")", meta: "mean", colour: g.colour, opacity: 1,
                      width: 2, x: band.x, y: band.mean, hover: true, points: band.x.length === 1 });
      }
    } else {
      for (const e of entries) {
        const l = lineOf(e);
        const one = l.x.length === 1;
        if (smooth) {
          traces.push({ name: e.label + " (raw)", meta: "raw", colour: e.colour, opacity: 0.25, width: 1,
                        x: l.x, y: l.y, hover: false, points: one });
        }
        traces.push({ name: e.label, meta: smooth ? "smoothed" : "raw", colour: e.colour, opacity: 1,
                      width: smooth ? 2 : 1.5, x: l.x, y: l.smoothed, hover: true, points: one });
      }
    }
    const xLabel = opts.xAxis === "time" ? (x) => new Date(x * 1000).toLocaleString() : (x) => opts.xAxis + " " + short(x);
    render(div, traces, bands, opts, xLabel);
    return drawn;
  }

  /** Have `onZoom(range)` called when a person zooms ([from, to] in x) or resets ("reset"). */
  function onZoomOf(div, onZoom) {
    stateOf(div).onZoom = onZoom;
  }

  /** Fit the chart to its box (after the window or the box was resized). */
  function resize(div) {
    const st = stateOf(div);
    if (st.u) st.u.setSize(sizeOf(div, st.less));
  }

  /** Remove the chart and what it holds. */
  function destroy(div) {
    const st = div._chart;
    if (!st) return;
    if (st.u) st.u.destroy();
    if (st.tip) st.tip.remove();
    div._chart = null;
  }

  /**
   * Parallel coordinates of config keys against a metric: an axis per key (scaled to its
   * own range, on a log scale when it spans decades; text values in sorted order), the
   * metric last, a line per run coloured by the metric (blue low, orange high).
   * runs: [{label, config (flat), metric}].
   */
  function drawParallel(div, runs, keys, metricName) {
    const t = theme();
    const axes = keys.map((k) => {
      const values = runs.map((r) => r.config[k]);
      const numeric = values.every((v) => v == null || typeof v === "number");
      if (numeric) {
        const nums = values.filter((v) => typeof v === "number");
        const lo = Math.min(...nums), hi = Math.max(...nums);
        const log = lo > 0 && hi / lo >= 100;
        const f = log ? Math.log10 : (v) => v;
        const pos = (v) => (typeof v !== "number" || (log && v <= 0) ? null : hi === lo ? 0.5 : (f(v) - f(lo)) / (f(hi) - f(lo)));
        return { name: log ? k + " (log)" : k, key: k, pos,
                 ticks: nums.length <= 6 ? [...new Set(nums)].map((v) => [pos(v), v]) : [[0, lo], [1, hi]] };
      }
      const cats = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
      const pos = (v) => (cats.length === 1 ? 0.5 : cats.indexOf(JSON.stringify(v)) / (cats.length - 1));
      return { name: k, key: k, pos, ticks: cats.slice(0, 12).map((c) => [pos(JSON.parse(c)), c.replace(/^"|"$/g, "")]) };
    });
    const metricValues = runs.map((r) => r.metric).filter(Number.isFinite);
    const mLo = Math.min(...metricValues), mHi = Math.max(...metricValues);
    axes.push({ name: metricName, key: metricName, pos: (v) => (!Number.isFinite(v) ? null : mHi === mLo ? 0.5 : (v - mLo) / (mHi - mLo)),
                ticks: [[0, mLo], [1, mHi]] });
    const low = [78, 121, 167], high = [242, 142, 43];
    const scale = (v) => {
      const f = !Number.isFinite(v) || mHi === mLo ? 0.5 : (v - mLo) / (mHi - mLo);
      return "#" + low.map((c, i) => Math.round(c + (high[i] - c) * f).toString(16).padStart(2, "0")).join("");
    };
    const raw = (r, i) => (i === axes.length - 1 ? r.metric : r.config[axes[i].key]);
    const traces = runs.map((r) => ({ name: r.label, meta: "run", colour: scale(r.metric), opacity: 1, width: 2, hover: true,
                                      points: true, x: axes.map((_, i) => i), y: axes.map((a, i) => a.pos(raw(r, i))) }));
    destroy(div);
    div.replaceChildren();
    const st = stateOf(div);
    st.traces = traces;
    st.xLabel = (i) => axes[i] ? axes[i].key : "";
    st.valueAt = (series, i) => { const v = raw(runs[series], i); return typeof v === "number" ? v : JSON.stringify(v); };
    st.less = 26;
    div.traces = traces;
    const ticks = document.createElement("div");
    ticks.className = "pc-ticks";
    st.u = new window.uPlot({
      ...sizeOf(div, st.less),
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      scales: { x: { time: false, range: () => [-0.2, axes.length - 0.6] }, y: { range: () => [-0.05, 1.05] } },
      axes: [axisStyle(t, { stroke: t.fg, grid: { stroke: t.muted, width: 1 }, splits: () => axes.map((_, i) => i),
                            values: (u, splits) => splits.map((i) => (axes[i] ? axes[i].name : "")) }),
             { show: false }],
      series: [{}, ...traces.map((tr) => ({ label: tr.name, stroke: tr.colour, width: 2, points: { show: true, size: 5, fill: tr.colour } }))],
      hooks: {
        setCursor: [(u) => readout(div, st, u)],
        // The values along each axis, placed as text over the plot where uPlot put the axis.
        draw: [(u) => {
          ticks.replaceChildren(...axes.flatMap((a, i) => a.ticks.map(([p, label]) => {
            const span = document.createElement("span");
            span.textContent = typeof label === "number" ? short(label) : String(label).slice(0, 24);
            span.style.left = (u.valToPos(i, "x") + 4) + "px";
            span.style.top = (u.valToPos(p, "y") - 7) + "px";
            return span;
          })));
        }],
      },
    }, [axes.map((_, i) => i), ...traces.map((tr) => tr.y)], div);
    st.u.over.append(ticks);
    const bar = document.createElement("div");
    bar.className = "pc-scale";
    const gradient = document.createElement("span");
    gradient.className = "pc-gradient";
    gradient.style.background = "linear-gradient(90deg, " + scale(mLo) + ", " + scale(mHi) + ")";
    bar.append(metricName + " " + short(mLo) + " ", gradient, " " + short(mHi));
    div.append(bar);
    div.axes = { x: "linear", y: "linear" };
  }

  window.TracklogCharts = { colour, ema, minMaxIndex, decimate, xOf, withZoom, groupBand, drawMetric, onZoomOf,
                            setZoom, resize, destroy, drawParallel };
})();
