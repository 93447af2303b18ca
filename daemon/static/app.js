// tracklog web console: follows the daemon over its WebSocket (JSON frames), live by push.
// On connect: hello, every run by pages of the `runs` query, then one subscription from the
// seq the first page answered, so no event falls in between; a run's summary skips events
// it already reflects (its updated_seq). After a reconnect it subscribes again from the last
// seq it applied: no gap, no duplicate. The view (filter, search, sort, columns, grouping,
// selection, chart options) lives in the URL's fragment, so it can be shared and survives
// a reload. Charts: charts.js (uPlot). No build step.
"use strict";

(function () {
  const C = window.TracklogCharts;
  const MAX_POINTS = 1000;            // points per run and metric asked from the daemon (its tiers downsample)
  const COARSE_POINTS = 100;          // the first, quick answer (from the tiers alone on series past 51,200 points)
  const COARSE_FROM = 50 * 1024;      // series longer than this (points a metric) are asked coarse first
  const LIVE_LIMIT = 4 * MAX_POINTS;  // a series grown past this by live points is thinned to 2 x MAX_POINTS
  const RUNS_PAGE = 1000;             // runs per `runs` query while loading
  const TABLE_PAGE = 100;             // rows per page of the runs table
  const ITEMS_SHOWN = 500;
  const LIVE_REDRAW_MS = 250;         // a chart growing live is redrawn at most this often
  const FRAME_BUDGET_MS = 8;          // chart drawing per animation frame, so frames stay short
  const DEFAULT_COLS = ["status", "name", "pipeline", "tags", "started", "duration", "items", "metrics"];
  const DEFAULT_SORT = "started:desc";
  const token = new URLSearchParams(location.search).get("token");
  const wsUrl = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws";
  const hasCharts = () => typeof window.uPlot === "function";

  const S = {
    runs: new Map(),          // run id -> summary (as the `runs` query gives it, kept live)
    runsVersion: 0,           // bumped when runs come, go or change config/tags (column and group choices)
    loaded: false,
    lastSeq: null,            // seq of the last event applied; null until the first query answers
    ws: null, refs: 1, pending: new Map(), retry: 0, gen: 0,
    view: null,               // parsed from the URL fragment
    filterIds: null, searchIds: null, filterError: null, filterBusy: 0, filterGen: 0, filterTimer: 0,
    series: new Map(),        // run id -> {state, gen, seq, buffer, metrics: Map(name -> series)}
    zoom: new Map(),          // run + "\u0001" + metric -> {from, to, series}
    summaries: new Map(),     // run id -> {metric -> compare row}, for the compare legend
    extremes: null,           // run id -> {metric -> {min, max}} for the table's min and max columns, kept live
    extremesGen: 0,
    open: null,               // the run view's state
    dirty: new Set(), raf: 0, renderFlags: new Set(), tableAt: 0,
    finePending: 0,           // second (sharp) series answers still awaited
  };
  // The page's own figures, for bench/console.py: when every chart of the view was first
  // drawn with all its runs, and the script time of each animation frame (the frame's
  // drawing plus the messages handled since the previous one), the last 4,000 frames.
  const perf = (window.__tracklogPerf = { fullPaint: null, sharpPaint: null, frameWork: [], messageMs: 0, marks: {}, drawMs: [] });
  const mark = (name) => { if (!(name in perf.marks)) perf.marks[name] = performance.now(); };

  // -- small helpers ----------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "tabindex" || k === "style" || k === "for")
        node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  };
  // JSON carries NaN and infinities as strings.
  const num = (v) => v === "NaN" ? NaN : v === "Infinity" ? Infinity : v === "-Infinity" ? -Infinity : v;
  const fmt = (v) => {
    v = num(v);
    if (typeof v !== "number") return v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
    return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e6 ? v.toPrecision(4).replace(/\.?0+$/, "") : v.toExponential(3);
  };
  /** Set a node's text only when it differs: an unchanged text costs no layout. */
  const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };
  const when = (ts) => ts ? new Date(ts * 1000).toLocaleString() : "";
  const isBad = (status) => status === "failed" || status === "lost";
  const duration = (run) => run.started ? (run.finished || (run.status === "running" ? Date.now() / 1000 : run.last_ts || run.started)) - run.started : null;
  const fmtDuration = (s) => {
    if (s == null || !Number.isFinite(s)) return "";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  };
  const encodeList = (xs) => xs.map(encodeURIComponent).join(",");
  const decodeList = (s) => (s ? s.split(",").filter(Boolean).map(decodeURIComponent) : []);

  /** A run's config as flat dotted keys (nested maps opened), cached on the run. */
  function flatConfig(run) {
    if (run._flat && run._flatOf === run.config) return run._flat;
    const out = {};
    const walk = (obj, prefix) => {
      for (const [k, v] of Object.entries(obj || {})) {
        if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) walk(v, prefix + k + ".");
        else out[prefix + k] = v;
      }
    };
    walk(run.config, "");
    run._flat = out;
    run._flatOf = run.config;
    return out;
  }

  // -- the view in the URL ------------------------------------------------------------------

  function parseHash() {
    let h = location.hash.slice(1);
    let query = "";
    const q = h.indexOf("?");
    if (q >= 0) { query = h.slice(q + 1); h = h.slice(0, q); }
    const p = new URLSearchParams(query);
    const m = h.match(/^run\/(.+)$/);
    return {
      name: m ? "run" : h === "compare" ? "compare" : "runs",
      run: m ? decodeURIComponent(m[1]) : null,
      q: p.get("q") || "",
      filter: p.get("filter") || "",
      sort: p.get("sort") || DEFAULT_SORT,
      cols: p.has("cols") ? decodeList(p.get("cols")) : DEFAULT_COLS.slice(),
      sel: decodeList(p.get("sel")),
      group: p.get("group") || "",
      page: Math.max(0, parseInt(p.get("page") || "0", 10) || 0),
      x: p.get("x") || "step",
      smooth: Math.min(0.99, Math.max(0, parseFloat(p.get("smooth") || "0") || 0)),
      log: p.get("log") === "1",
      agg: p.get("agg") !== "0",
      pc: p.get("pc") || "",
      gridCols: p.get("gc") || "2",
    };
  }

  function hashOf(v) {
    const p = new URLSearchParams();
    if (v.q) p.set("q", v.q);
    if (v.filter) p.set("filter", v.filter);
    if (v.sort !== DEFAULT_SORT) p.set("sort", v.sort);
    if (v.cols.join(",") !== DEFAULT_COLS.join(",")) p.set("cols", encodeList(v.cols));
    if (v.sel.length) p.set("sel", encodeList(v.sel));
    if (v.group) p.set("group", v.group);
    if (v.page) p.set("page", String(v.page));
    if (v.x !== "step") p.set("x", v.x);
    if (v.smooth) p.set("smooth", String(v.smooth));
    if (v.log) p.set("log", "1");
    if (!v.agg) p.set("agg", "0");
    if (v.pc) p.set("pc", v.pc);
    if (v.gridCols !== "2") p.set("gc", v.gridCols);
    const base = v.name === "run" ? "run/" + encodeURIComponent(v.run) : v.name;
    const query = p.toString();
    return "#" + base + (query ? "?" + query : "");
  }

  /** Change the view: the URL first (pushed for a new page, replaced for a tweak), then the page. */
  function setView(patch, push) {
    const next = Object.assign({}, S.view, patch);
    const hash = hashOf(next);
    if (hash !== location.hash) history[push ? "pushState" : "replaceState"](null, "", hash);
    applyView(next);
  }

  function applyView(next) {
    const prev = S.view;
    S.view = next;
    const changed = (k) => !prev || JSON.stringify(prev[k]) !== JSON.stringify(next[k]);
    if (changed("filter") || changed("q")) refreshFilter();
    if (changed("name") || changed("run") || changed("sel") || changed("x")) S.zoom.clear();
    if (prev && (prev.name !== next.name || prev.run !== next.run)) leaveView(prev);
    if (changed("name")) S.summaries.clear();  // the legend's min and max, read afresh
    // Series are kept only for the runs the view draws: a page left open all day holds what it shows.
    const wanted = new Set(next.name === "compare" ? next.sel : next.name === "run" ? [next.run] : []);
    for (const id of [...S.series.keys()]) if (!wanted.has(id)) S.series.delete(id);
    syncControls();
    render("all");
  }

  function leaveView(prev) {
    const box = prev.name === "run" ? $("charts") : prev.name === "compare" ? $("compare-charts") : null;
    if (box) for (const plot of box.querySelectorAll(".plot")) C.destroy(plot);
    if (box) box.replaceChildren();
    if (prev.name === "run") S.open = null;
    if (prev.name === "compare") C.destroy($("parcoords"));
    S.pcKey = null;
  }

  function syncControls() {
    const v = S.view;
    if (document.activeElement !== $("filter")) $("filter").value = v.filter;
    if (document.activeElement !== $("search")) $("search").value = v.q;
    $("xaxis").value = v.x;
    $("smooth").value = String(v.smooth);
    $("smooth-value").textContent = v.smooth.toFixed(2);
    $("log").checked = v.log;
    $("agg").checked = v.agg;
    $("agg-box").hidden = !v.group;
    $("grid-cols").value = v.gridCols;
    $("charts").style.setProperty("--cols", v.gridCols);
    $("runs-pane").hidden = v.name !== "runs";
    $("compare-pane").hidden = v.name !== "compare";
    $("run-pane").hidden = v.name !== "run";
    $("chart-tools").hidden = v.name === "runs";
    const pane = v.name === "compare" ? $("compare-pane") : v.name === "run" ? $("run-pane") : null;
    if (pane) pane.querySelector(".tools-slot").append($("chart-tools"));
    $("sel-count").textContent = "(" + v.sel.length + ")";
    $("nav-runs").setAttribute("aria-current", v.name === "runs" ? "page" : "false");
    $("nav-compare").setAttribute("aria-current", v.name === "compare" ? "page" : "false");
  }

  // -- connection ----------------------------------------------------------------------

  function setConn(text) {
    const c = $("conn");
    c.textContent = text;
    c.dataset.state = text;
    c.className = "conn conn-" + text.replace(/[^a-z]+/g, "-");
  }

  function send(msg, onReply) {
    if (onReply) { msg.ref = S.refs++; S.pending.set(msg.ref, onReply); }
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(msg));
  }
  const query = (q, onReply) => send(Object.assign({ op: "query" }, q), onReply);

  function connect() {
    setConn(S.lastSeq === null ? "connecting" : "reconnecting");
    const ws = new WebSocket(wsUrl);
    S.ws = ws;
    ws.onopen = () => {
      const hello = { op: "hello", protocol: 1, client: "tracklog-web" };
      if (token) hello.token = token;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (e) => {
      const t0 = performance.now();
      onMessage(JSON.parse(e.data));
      const spent = performance.now() - t0;
      perf.messageMs += spent;
      perf.messageTotal = (perf.messageTotal || 0) + spent;
    };
    ws.onclose = () => {
      if (S.ws !== ws) return;
      S.ws = null;
      S.pending.clear();
      S.finePending = 0;
      setConn("reconnecting");
      const delay = Math.min(5000, 100 * 2 ** S.retry++) * (0.5 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  }

  function onMessage(msg) {
    if (msg.ref != null && S.pending.has(msg.ref)) {
      const cb = S.pending.get(msg.ref);
      S.pending.delete(msg.ref);
      cb(msg);
      return;
    }
    switch (msg.op) {
      case "welcome":
        mark("welcome");
        S.retry = 0;
        S.gen++;  // what was asked before this connection is never answered: whatever waits for it asks again
        // A log shorter than what we saw is another database: start over.
        if (S.lastSeq === null || msg.head < S.lastSeq) loadRuns(); else resume();
        break;
      case "events":
        for (const ev of msg.events) applyEvent(ev);
        render("events");
        break;
      case "live":
        setConn("live");
        break;
      case "error":
        setConn("error: " + msg.code);
        console.warn("tracklog:", msg.code, msg.message);
        break;
    }
  }

  /** Every run, page by page; the subscription starts at the first page's seq. */
  function loadRuns() {
    const fresh = S.lastSeq !== null;
    if (fresh) { S.series.clear(); S.zoom.clear(); S.summaries.clear(); S.open = null; dropExtremes(); }
    const runs = new Map();
    let firstSeq = null;
    const page = (offset) => query({ q: "runs", limit: RUNS_PAGE, offset }, (reply) => {
      if (reply.op !== "result") { setConn("error: " + reply.code); return; }
      if (firstSeq === null) firstSeq = reply.seq;
      for (const r of reply.rows) runs.set(r.id, r);
      if (reply.rows.length === RUNS_PAGE && offset + RUNS_PAGE < reply.total) { page(offset + RUNS_PAGE); return; }
      S.runs = runs;
      S.runsVersion++;
      S.loaded = true;
      mark("runs");
      S.lastSeq = firstSeq;
      refreshFilter();
      render("all");
      subscribe();
    });
    page(0);
  }

  function subscribe() {
    setConn("catching up");
    send({ op: "subscribe", from_seq: S.lastSeq }, (reply) => {
      if (reply.op !== "subscribed") setConn("error: " + reply.code);
    });
  }

  /** After a reconnect: follow on from the last seq, and ask again what was asked and never answered. */
  function resume() {
    subscribe();
    if (S.extremesWaiting) dropExtremes();  // its answers were lost with the connection: asked again
    for (const [id, store] of S.series) if (!store.sharp && store.gen !== S.gen) S.series.delete(id);
    for (const [id, summary] of S.summaries) if (summary === null) S.summaries.delete(id);
    if (S.open && S.open.gen !== S.gen && (S.open.itemsSeq === null || S.open.artifactsSeq === null)) S.open = null;
    refreshFilter();
    render("all");
  }

  // -- events --------------------------------------------------------------------------

  function applyEvent(ev) {
    if (S.lastSeq !== null && ev.seq <= S.lastSeq) return;
    S.lastSeq = ev.seq;
    if (ev.run == null) return;
    applyToRun(ev);
    if (ev.type === "metrics") {
      const store = S.series.get(ev.run);
      if (store && store.state === "loading") store.buffer.push(ev);
      else if (store && ev.seq > store.seq) addPoints(store, ev);
    }
    if (S.open && S.open.id === ev.run) applyToOpen(ev);
  }

  function applyToRun(ev) {
    const data = ev.data || {};
    let run = S.runs.get(ev.run);
    if (ev.type === "run.restored") { if (!run) fetchRun(ev.run); return; }
    if (!run) {
      if (ev.type === "run.deleted") return;
      run = { id: ev.run, status: "running", metrics: {}, config: {}, n_items: 0, n_failed: 0, n_artifacts: 0,
              n_points: 0, started: ev.ts, tags: [], updated_seq: 0 };
      S.runs.set(ev.run, run);
      S.runsVersion++;
      scheduleFilterRefresh();
    }
    if (run.updated_seq >= ev.seq) return;  // its summary was read after this event
    run.updated_seq = ev.seq;
    run.last_ts = ev.ts;
    switch (ev.type) {
      case "run.started":
        for (const k of ["name", "pipeline", "user", "host", "notes", "session", "parent"]) if (data[k] != null) run[k] = data[k];
        if (data.config) run.config = data.config;
        if (data.tags) run.tags = data.tags.slice().sort();
        run.started = ev.ts;
        S.runsVersion++;
        scheduleFilterRefresh();
        break;
      case "run.updated":
        for (const k of ["name", "notes"]) if (data[k] != null) run[k] = data[k];
        if (data.config) run.config = Object.assign({}, run.config, data.config);
        if (data.add_tags) run.tags = [...new Set([...(run.tags || []), ...data.add_tags])].sort();
        if (data.remove_tags) run.tags = (run.tags || []).filter((t) => !data.remove_tags.includes(t));
        if (data.status) { run.status = data.status; run.finished = null; run.error = null; }
        S.runsVersion++;
        scheduleFilterRefresh();
        break;
      case "run.finished":
        run.status = data.status;
        run.error = data.error || null;
        run.finished = ev.ts;
        scheduleFilterRefresh();
        break;
      case "run.deleted":
        S.runs.delete(ev.run);
        S.runsVersion++;
        break;
      case "metrics":
        run.metrics = run.metrics || {};
        for (const [k, v] of Object.entries(data.values || {})) {
          if (!(k in run.metrics)) S.runsVersion++;
          run.metrics[k] = num(v);
          run.n_points = (run.n_points || 0) + 1;
        }
        if (S.extremes) addExtremes(ev.run, data.values || {});
        if (S.view && S.view.filter.includes("metrics.")) scheduleFilterRefresh();
        break;
      case "item":
        run.n_items = (run.n_items || 0) + 1;
        if (data.status === "failed") run.n_failed = (run.n_failed || 0) + 1;
        break;
      case "artifact":
        run.n_artifacts = (run.n_artifacts || 0) + 1;
        break;
    }
  }

  /**
   * Every run's lowest and highest value of each metric, for the table's min and max
   * columns: asked once (the `compare` query, by pages of 1,000 runs) when such a column is
   * shown or sorted on, then kept by the metrics events that follow.
   */
  function loadExtremes() {
    if (S.extremes || !S.loaded) return;
    const extremes = (S.extremes = new Map());
    const gen = ++S.extremesGen;
    const ids = [...S.runs.keys()];
    const waiting = [];  // metrics events applied while the answers were on their way
    S.extremesWaiting = waiting;
    let pending = 0;
    for (let i = 0; i < ids.length; i += 1000) {
      pending++;
      query({ q: "compare", runs: ids.slice(i, i + 1000) }, (reply) => {
        if (gen !== S.extremesGen) return;
        if (reply.op === "result") {
          for (const row of reply.rows) {
            if (!extremes.has(row.run)) extremes.set(row.run, {});
            extremes.get(row.run)[row.metric] = { min: num(row.min), max: num(row.max), seq: reply.seq };
          }
        }
        if (--pending) return;
        for (const ev of waiting) addExtremes(ev.run, ev.data.values || {}, ev.seq);
        S.extremesWaiting = null;
        render("table");
      });
    }
    if (!pending) S.extremesWaiting = null;
  }

  function dropExtremes() {
    S.extremes = null;
    S.extremesWaiting = null;
    S.extremesGen++;
  }

  function addExtremes(run, values, seq) {
    if (S.extremesWaiting && seq === undefined) { S.extremesWaiting.push({ run, seq: S.lastSeq, data: { values } }); return; }
    if (!S.extremes.has(run)) S.extremes.set(run, {});
    const m = S.extremes.get(run);
    for (const [k, raw] of Object.entries(values)) {
      const v = num(raw);
      if (typeof v !== "number" || Number.isNaN(v)) continue;
      const e = m[k];
      if (!e) { m[k] = { min: v, max: v, seq: seq || 0 }; continue; }
      if (seq !== undefined && seq <= e.seq) continue;  // the summary already has it
      if (!(e.min <= v)) e.min = v;
      if (!(e.max >= v)) e.max = v;
    }
  }

  function fetchRun(id) {
    query({ q: "runs", filter: "id = '" + id.replace(/'/g, "''") + "'", limit: 1 }, (reply) => {
      if (reply.op !== "result" || !reply.rows.length) return;
      S.runs.set(id, reply.rows[0]);
      S.runsVersion++;
      render("events");
    });
  }

  // -- filter and search: the daemon answers, the page keeps the matching ids -------------

  function scheduleFilterRefresh() {
    if (!S.view || (!S.view.filter.trim() && !S.view.q.trim()) || S.filterTimer) return;
    S.filterTimer = setTimeout(() => { S.filterTimer = 0; refreshFilter(); }, 1000);
  }

  function refreshFilter() {
    if (!S.loaded || !S.view) return;
    const gen = ++S.filterGen;
    const filter = S.view.filter.trim(), text = S.view.q.trim();
    if (!filter) { S.filterIds = null; S.filterError = null; }
    if (!text) S.searchIds = null;
    if (filter) {
      S.filterBusy++;
      const ids = new Set();
      const page = (offset) => query({ q: "runs", filter, limit: RUNS_PAGE, offset }, (reply) => {
        if (gen !== S.filterGen) { S.filterBusy--; return; }
        if (reply.op !== "result") {
          S.filterBusy--;
          const at = /\bat (\d+)\s*$/.exec(reply.message || "");
          S.filterError = { message: reply.message || reply.code, position: at ? Number(at[1]) : null, text: filter };
          render("table");
          return;
        }
        for (const r of reply.rows) { ids.add(r.id); if (!S.runs.has(r.id)) S.runs.set(r.id, r); }
        if (reply.rows.length === RUNS_PAGE && offset + RUNS_PAGE < reply.total) { page(offset + RUNS_PAGE); return; }
        S.filterBusy--;
        S.filterIds = ids;
        S.filterError = null;
        render("table");
      });
      page(0);
    }
    if (text) {
      query({ q: "search", text, limit: 1000 }, (reply) => {
        if (gen !== S.filterGen) return;
        S.searchIds = new Set(reply.op === "result" ? reply.rows.map((r) => r.run) : []);
        render("table");
      });
    }
    render("table");
  }

  // -- rendering, batched to animation frames -------------------------------------------

  function render(what) {
    S.renderFlags.add(what);
    kick();
  }

  function kick() {
    if (!S.raf) S.raf = requestAnimationFrame(frame);
  }

  function frame() {
    S.raf = 0;
    const start = performance.now();
    const flags = S.renderFlags;
    if (flags.size && S.view && S.loaded) {
      const all = flags.has("all");
      $("head").dataset.seq = S.lastSeq || 0;
      // While events stream, tables and legends are redrawn at most 4 times a second: a
      // change of text costs a layout and a repaint of the page, where a chart's redraw
      // repaints its own canvas only.
      if (all || !flags.has("events") || flags.size > 1 || start - S.tableAt > 250) {
        S.renderFlags = new Set();
        S.tableAt = start;
        setText($("head"), "seq " + (S.lastSeq || 0));
        const charts = all || flags.has("series");  // every chart redrawn: new series or options
        if (S.view.name === "runs") renderTable();
        else if (S.view.name === "compare") renderCompare(all, charts);
        else if (S.view.name === "run") renderRun(charts);
      } else kick();
    }
    for (const box of [...S.dirty]) {
      if (!box.isConnected) { S.dirty.delete(box); continue; }
      // A chart scrolled out of sight does not follow live points; it catches up when seen.
      if (box.live && box.hiddenFromView) { S.dirty.delete(box); box.stale = true; continue; }
      // A chart growing live is redrawn at most every LIVE_REDRAW_MS, or less often when its
      // redraw is costly (25 times its last cost, up to 2 s), so streaming leaves most frames free.
      const every = Math.min(2000, Math.max(LIVE_REDRAW_MS, 25 * (box.drawCost || 0)));
      if (box.live && performance.now() - (box.drawnAt || 0) < every) continue;
      S.dirty.delete(box);
      const t0 = performance.now();
      box.draw();
      box.drawnAt = performance.now();
      box.drawCost = box.drawnAt - t0;
      if (perf.drawMs.length < 4000) perf.drawMs.push(box.drawCost);
      if (performance.now() - start > FRAME_BUDGET_MS) break;
    }
    if (S.dirty.size) kick();
    if (perf.fullPaint === null && S.view && S.view.name !== "runs") {
      const boxes = [...document.querySelectorAll(S.view.name === "compare" ? "#compare-charts .chart" : "#charts .chart")];
      if (boxes.length && boxes.every((b) => b.dataset.ready === "1")) perf.fullPaint = performance.now();
    }
    if (perf.sharpPaint === null && perf.fullPaint !== null) {
      const boxes = [...document.querySelectorAll(S.view.name === "compare" ? "#compare-charts .chart" : "#charts .chart")];
      if (boxes.length && boxes.every((b) => b.dataset.sharp === "1")) perf.sharpPaint = performance.now();
    }
    perf.frameWork.push(performance.now() - start + perf.messageMs);
    perf.messageMs = 0;
    if (perf.frameWork.length > 4000) perf.frameWork.splice(0, 1000);
  }

  /** Ask for a chart to be drawn: at once for a change of view, at most every LIVE_REDRAW_MS when growing live. */
  function redraw(box, live) {
    box.live = !!live;
    S.dirty.add(box);
    kick();
  }

  // -- the runs table ---------------------------------------------------------------------

  const BUILTIN_COLUMNS = {
    status: { label: "status", value: (r) => r.status, cell: (r) => el("span", { class: "status status-" + r.status }, r.status) },
    name: { label: "name", value: (r) => r.name || r.id, cell: (r) => el("span", { class: "run-name", title: r.id }, r.name || r.id) },
    pipeline: { label: "pipeline", value: (r) => r.pipeline },
    tags: { label: "tags", value: (r) => (r.tags || []).join(" "), cell: (r) => tagList(r.tags) },
    started: { label: "started", value: (r) => r.started, cell: (r) => when(r.started) },
    duration: { label: "duration", value: duration, cell: (r) => fmtDuration(duration(r)) },
    items: { label: "items", value: (r) => r.n_items || 0,
             cell: (r) => (r.n_items || 0) + (r.n_failed ? " (" + r.n_failed + " failed)" : "") },
    metrics: { label: "last metrics", value: null, cell: (r) => Object.entries(r.metrics || {}).slice(0, 4).map(([k, v]) =>
      el("span", { class: "metric" }, k + " ", el("b", {}, fmt(v)))) },
  };

  function column(id) {
    if (BUILTIN_COLUMNS[id]) return BUILTIN_COLUMNS[id];
    if (id.startsWith("m:")) {
      const name = id.slice(2);
      return { label: name, numeric: true, value: (r) => num((r.metrics || {})[name]), cell: (r) => fmt((r.metrics || {})[name]) };
    }
    // A metric's lowest or highest value over the whole run (the daemon's summaries).
    for (const [prefix, which] of [["mn:", "min"], ["mx:", "max"]]) {
      if (!id.startsWith(prefix)) continue;
      const name = id.slice(prefix.length);
      const value = (r) => { const m = S.extremes && S.extremes.get(r.id); return m && m[name] ? num(m[name][which]) : null; };
      return { label: name + " " + which, numeric: true, extremes: true, value, cell: (r) => fmt(value(r)) };
    }
    if (id.startsWith("c:")) {
      const key = id.slice(2);
      return { label: key, value: (r) => flatConfig(r)[key], cell: (r) => fmt(flatConfig(r)[key]) };
    }
    return null;
  }

  const tagList = (tags) => el("span", { class: "tags" }, ...(tags || []).map((t) => el("span", { class: "tag" }, t)));

  // One collator for every comparison: localeCompare builds one per call (10x slower on 10,000 rows).
  const collator = new Intl.Collator(undefined, { numeric: true });

  function compareValues(a, b) {
    const na = a == null || (typeof a === "number" && Number.isNaN(a)), nb = b == null || (typeof b === "number" && Number.isNaN(b));
    if (na || nb) return na === nb ? 0 : na ? 1 : -1;  // missing values last, whichever the direction
    if (typeof a === "number" && typeof b === "number") return a - b;
    return collator.compare(String(a), String(b));
  }

  function groupKeyOf(run, group) {
    if (!group) return "";
    if (group === "tags") return (run.tags || []).join(", ") || "(no tags)";
    if (group.startsWith("tag:")) return (run.tags || []).includes(group.slice(4)) ? group.slice(4) : "not " + group.slice(4);
    if (group.startsWith("c:")) {
      const v = flatConfig(run)[group.slice(2)];
      return v === undefined ? "(unset)" : fmt(v);
    }
    return "";
  }

  /** The runs the table shows, filtered, searched, grouped and sorted. */
  function visibleRuns() {
    const v = S.view;
    let rows = [...S.runs.values()].filter((r) => !r.deleted);
    if (S.filterIds) rows = rows.filter((r) => S.filterIds.has(r.id));
    if (S.searchIds) rows = rows.filter((r) => S.searchIds.has(r.id));
    const [col, dir] = sortOf(v);
    const c = column(col);
    const sign = dir === "asc" ? 1 : -1;
    const keyed = rows.map((r) => ({ r, k: c && c.value ? c.value(r) : null, g: groupKeyOf(r, v.group) }));
    keyed.sort((a, b) => {
      if (v.group) { const g = compareValues(a.g, b.g); if (g) return g; }
      const missing = (x) => x == null || (typeof x === "number" && Number.isNaN(x));
      if (missing(a.k) || missing(b.k)) return compareValues(a.k, b.k);
      return sign * compareValues(a.k, b.k) || compareValues(a.r.created_seq, b.r.created_seq);
    });
    return keyed;
  }

  /** The view's sort as [column, "asc" or "desc"]: split at the last colon, as column ids hold colons. */
  function sortOf(v) {
    const at = v.sort.lastIndexOf(":");
    return at < 0 ? [v.sort, "desc"] : [v.sort.slice(0, at), v.sort.slice(at + 1)];
  }

  function renderTable() {
    const v = S.view;
    const cols = v.cols.filter(column);
    if ([...cols, sortOf(v)[0]].some((id) => column(id) && column(id).extremes)) loadExtremes();
    const sel = new Set(v.sel);
    const [sortCol, sortDir] = sortOf(v);
    const head = $("runs").tHead.rows[0];
    const selectAll = el("input", { type: "checkbox", "aria-label": "select every run on this page" });
    head.replaceChildren(el("th", { class: "pick" }, selectAll), ...cols.map((id) => {
      const c = column(id);
      const sorted = id === sortCol;
      const button = el("button", { type: "button", class: "sort", "data-col": id, title: "sort by " + c.label },
        c.label, sorted ? (sortDir === "asc" ? " \u25b2" : " \u25bc") : "");
      if (c.value) button.onclick = () => setView({ sort: id + ":" + (sorted && sortDir === "asc" ? "desc" : "asc"), page: 0 });
      else button.disabled = true;
      return el("th", { "aria-sort": sorted ? (sortDir === "asc" ? "ascending" : "descending") : null, "data-col": id }, button);
    }));

    const rows = visibleRuns();
    const pages = Math.max(1, Math.ceil(rows.length / TABLE_PAGE));
    const page = Math.min(v.page, pages - 1);
    const shown = rows.slice(page * TABLE_PAGE, (page + 1) * TABLE_PAGE);
    const groups = new Map();
    if (v.group) for (const x of rows) groups.set(x.g, (groups.get(x.g) || []).concat([x.r.id]));
    const body = [];
    let lastGroup = null;
    for (const { r, g } of shown) {
      if (v.group && g !== lastGroup) {
        lastGroup = g;
        const members = groups.get(g);
        const box = el("input", { type: "checkbox", "aria-label": "select the group " + g,
                                  checked: members.every((id) => sel.has(id)) });
        box.onchange = () => setView({ sel: box.checked ? [...new Set([...v.sel, ...members])] : v.sel.filter((id) => !members.includes(id)) });
        body.push(el("tr", { class: "group", "data-group": g },
          el("td", { class: "pick" }, box),
          el("td", { colSpan: cols.length }, el("b", {}, g), " ", el("span", { class: "muted" }, members.length + " runs"))));
      }
      body.push(runRow(r, cols, sel.has(r.id)));
    }
    $("runs").tBodies[0].replaceChildren(...body);
    const pageIds = shown.map((x) => x.r.id);
    selectAll.checked = pageIds.length > 0 && pageIds.every((id) => sel.has(id));
    selectAll.onchange = () => setView({ sel: selectAll.checked ? [...new Set([...v.sel, ...pageIds])] : v.sel.filter((id) => !pageIds.includes(id)) });

    $("no-runs").hidden = rows.length > 0;
    $("no-runs").textContent = S.runs.size ? "No run matches." : "No runs yet.";
    const total = [...S.runs.values()].filter((r) => !r.deleted).length;
    $("run-count").textContent = "(" + (rows.length === total ? total : rows.length + " of " + total) + ")" + (S.filterBusy ? " filtering\u2026" : "");
    $("runs").dataset.rows = String(rows.length);
    $("page-info").textContent = rows.length ? (page * TABLE_PAGE + 1) + "\u2013" + (page * TABLE_PAGE + shown.length) + " of " + rows.length : "";
    $("page-prev").disabled = page === 0;
    $("page-next").disabled = page >= pages - 1;
    $("compare-selected").disabled = v.sel.length === 0;
    $("compare-selected").textContent = "Compare selected (" + v.sel.length + ")";
    $("clear-selection").disabled = v.sel.length === 0;
    renderFilterError();
    renderGroupOptions();
  }

  function runRow(run, cols, selected) {
    const pick = el("input", { type: "checkbox", checked: selected, "aria-label": "select " + (run.name || run.id) });
    pick.onchange = () => toggleSelected(run.id, pick.checked);
    pick.onclick = (e) => e.stopPropagation();
    const tr = el("tr", { class: (isBad(run.status) ? "bad " : "") + (selected ? "selected" : ""), "data-run": run.id,
                          "data-status": run.status, tabindex: "0" },
      el("td", { class: "pick" }, pick),
      ...cols.map((id) => {
        const c = column(id);
        const content = c.cell ? c.cell(run) : fmt(c.value(run));
        return el("td", { "data-col": id, class: c.numeric ? "num" : null }, ...(Array.isArray(content) ? content : [content]));
      }));
    tr.onclick = () => setView({ name: "run", run: run.id }, true);
    tr.onkeydown = (e) => {
      if (e.target !== tr) return;
      if (e.key === "Enter") setView({ name: "run", run: run.id }, true);
      else if (e.key === " ") { e.preventDefault(); toggleSelected(run.id, !new Set(S.view.sel).has(run.id)); }
    };
    return tr;
  }

  function toggleSelected(id, on) {
    const sel = S.view.sel.filter((x) => x !== id);
    if (on) sel.push(id);
    setView({ sel });
  }

  function renderFilterError() {
    const box = $("filter-error");
    const err = S.filterError;
    $("filter").setAttribute("aria-invalid", err ? "true" : "false");
    box.hidden = !err;
    if (!err) { box.replaceChildren(); delete box.dataset.position; return; }
    box.dataset.position = err.position == null ? "" : String(err.position);
    const children = [el("div", {}, err.message)];
    if (err.position != null) {
      const p = err.position;
      children.push(el("pre", { class: "filter-at" }, err.text.slice(0, p),
        el("mark", {}, err.text.slice(p, p + 1) || " "), err.text.slice(p + 1), "\n" + " ".repeat(p) + "^"));
    }
    box.replaceChildren(...children);
  }

  let optionsVersion = -1;
  /** The group-by and column choices: built-ins, every metric name, every config key and tag seen. */
  function knownKeys() {
    const metrics = new Set(), config = new Set(), tags = new Set();
    for (const r of S.runs.values()) {
      for (const k of Object.keys(r.metrics || {})) metrics.add(k);
      for (const k of Object.keys(flatConfig(r))) if (config.size < 500) config.add(k);
      for (const t of r.tags || []) if (tags.size < 200) tags.add(t);
    }
    return { metrics: [...metrics].sort(), config: [...config].sort(), tags: [...tags].sort() };
  }

  function renderGroupOptions() {
    if (optionsVersion === S.runsVersion) return;
    optionsVersion = S.runsVersion;
    const keys = knownKeys();
    const group = $("group");
    const current = S.view.group;
    group.replaceChildren(el("option", { value: "" }, "none"), el("option", { value: "tags" }, "tags"),
      ...keys.tags.map((t) => el("option", { value: "tag:" + t }, "tag " + t)),
      ...keys.config.map((k) => el("option", { value: "c:" + k }, "config." + k)));
    if (current && ![...group.options].some((o) => o.value === current)) group.append(el("option", { value: current }, current));
    group.value = current;
    const cols = new Set(S.view.cols);
    const choices = [...Object.keys(BUILTIN_COLUMNS).map((id) => [id, BUILTIN_COLUMNS[id].label]),
                     ...keys.metrics.flatMap((m) => [["m:" + m, "metrics." + m], ["mn:" + m, "metrics." + m + " min"], ["mx:" + m, "metrics." + m + " max"]]),
                     ...keys.config.map((k) => ["c:" + k, "config." + k])];
    $("columns").replaceChildren(...choices.map(([id, label]) => {
      const box = el("input", { type: "checkbox", checked: cols.has(id), "data-col": id });
      box.onchange = () => setView({ cols: box.checked ? [...S.view.cols, id] : S.view.cols.filter((c) => c !== id) });
      return el("label", {}, box, " " + label);
    }));
  }

  // -- series: a run's metric histories, loaded once and then kept live ----------------------

  /**
   * The run's series store, asked for when first needed, in two steps: first COARSE_POINTS a
   * metric (from the daemon's precomputed tiers on long series: no point is read), drawn at
   * once; then MAX_POINTS a metric, which replaces them. Live points wait in `buffer` until
   * the first answer, and are kept in `since` until the second, which they follow on from.
   */
  function seriesOf(id) {
    let store = S.series.get(id);
    if (store) return store;
    store = { state: "loading", sharp: false, gen: S.gen, seq: 0, buffer: [], since: [], metrics: new Map() };
    S.series.set(id, store);
    const fill = (reply) => {
      const metrics = new Map();
      for (const row of reply.rows) {
        metrics.set(row.name, { steps: row.steps, values: row.values.map(num), epochs: row.epochs, ts: row.ts,
                                downsampled: row.downsampled, count: row.points });
      }
      store.metrics = metrics;
      store.seq = reply.seq;
    };
    // Only long series take the coarse step: on shorter ones the daemon reads every point
    // either way, so one answer of MAX_POINTS comes as soon.
    const run = S.runs.get(id) || {};
    const perMetric = (run.n_points || 0) / Math.max(1, Object.keys(run.metrics || {}).length);
    const first = perMetric > COARSE_FROM ? COARSE_POINTS : MAX_POINTS;
    query({ q: "metrics", run: id, max_points: first }, (reply) => {
      if (S.series.get(id) !== store) return;
      if (reply.op === "result") fill(reply);
      store.state = "ready";
      perf.marks.series = performance.now();
      for (const ev of store.buffer) if (ev.seq > store.seq) addPoints(store, ev);
      store.buffer = [];
      render("series");
      if (first === MAX_POINTS || reply.op !== "result" || !reply.rows.some((r) => r.downsampled)) {
        store.sharp = true;
        store.since = null;
        return;
      }
      S.finePending++;
      query({ q: "metrics", run: id, max_points: MAX_POINTS }, (fine) => {
        S.finePending--;
        if (S.series.get(id) !== store) return;
        const live = store.since;
        store.since = null;
        store.sharp = true;
        if (fine.op === "result") {
          fill(fine);
          for (const ev of live) if (ev.seq > store.seq) addPoints(store, ev);
        }
        perf.marks.sharp = performance.now();
        // The charts are redrawn once the last of these answers is in, not once per run.
        if (!S.finePending) render("series");
      });
    });
    return store;
  }

  function addPoints(store, ev) {
    if (store.since) store.since.push(ev);
    const step = ev.data.step, epoch = ev.data.epoch;
    for (const [name, raw] of Object.entries(ev.data.values || {})) {
      let s = store.metrics.get(name);
      if (!s) { s = { steps: [], values: [], epochs: [], ts: [], downsampled: false, count: 0 }; store.metrics.set(name, s); render("series"); }
      s.steps.push(step != null ? step : (s.steps.length ? s.steps[s.steps.length - 1] + 1 : 0));
      s.values.push(num(raw));
      s.epochs.push(epoch != null ? epoch : null);
      s.ts.push(ev.ts);
      s.count++;
      if (s.values.length > LIVE_LIMIT) C.decimate(s, 2 * MAX_POINTS);
      chartsShowing(ev.run, name).forEach((box) => redraw(box, true));
    }
  }

  /** The chart boxes now on the page that draw this run's metric. */
  function chartsShowing(run, metric) {
    const v = S.view;
    if (!v) return [];
    const pane = v.name === "compare" && v.sel.includes(run) ? $("compare-charts") : v.name === "run" && v.run === run ? $("charts") : null;
    if (!pane) return [];
    const box = pane.boxByMetric && pane.boxByMetric.get(metric);
    return box ? [box] : [];
  }

  // -- charts: one box per metric -----------------------------------------------------------

  /** Make sure `pane` has one chart box per name, in name order; each box draws itself through `draw`. */
  function chartBoxes(pane, names, drawOne) {
    const have = new Map([...pane.children].map((b) => [b.dataset.metric, b]));
    for (const [name, box] of have) if (!names.includes(name)) { C.destroy(box.querySelector(".plot")); box.remove(); }
    let previous = null;
    for (const name of names) {
      let box = have.get(name);
      if (!box) {
        const plot = el("div", { class: "plot", role: "img", "aria-label": "chart of " + name });
        box = el("div", { class: "chart", "data-metric": name, "data-points": "0", "data-fetches": "0" },
          el("h4", {}, el("span", {}, name), el("span", { class: "muted last" })), plot);
        box.plot = plot;
        box.createdAt = performance.now();
        if (previous) previous.after(box); else pane.prepend(box);
        if (window.IntersectionObserver) {
          new IntersectionObserver((seen) => {
            box.hiddenFromView = !seen[seen.length - 1].isIntersecting;
            if (!box.hiddenFromView && box.stale) { box.stale = false; redraw(box); }
          }, { rootMargin: "200px" }).observe(box);
        }
        if (window.ResizeObserver) {
          let first = true;
          new ResizeObserver(() => { if (first) { first = false; return; } C.resize(plot); }).observe(box);
        }
      } else if (previous ? previous.nextElementSibling !== box : pane.firstElementChild !== box) {
        if (previous) previous.after(box); else pane.prepend(box);
      }
      box.draw = () => drawOne(box, name);  // the newest entries and options
      previous = box;
    }
    // Found by name for each live point (thousands a second), without a selector query.
    pane.boxByMetric = new Map([...pane.children].map((b) => [b.dataset.metric, b]));
  }

  /** Draw a metric's chart for these runs: entries [{run, label, colour, group}]. */
  function drawChart(box, name, entries) {
    const v = S.view;
    const lines = [];
    let points = 0, ready = true, sharp = true;
    for (const e of entries) {
      const store = S.series.get(e.run);
      if (!store || store.state !== "ready") { ready = false; sharp = false; continue; }
      if (!store.sharp) sharp = false;
      const series = store.metrics.get(name);
      if (!series) continue;
      points += series.values.length;
      lines.push(Object.assign({ series, zoom: S.zoom.get(e.run + "\u0001" + name) }, e));
    }
    const last = lines.length === 1 ? lines[0].series.values[lines[0].series.values.length - 1] : undefined;
    setText(box.querySelector(".last"), last !== undefined ? fmt(last) : "");
    box.dataset.points = String(points);
    box.dataset.traces = String(lines.length);
    box.dataset.smooth = String(v.smooth);
    box.dataset.ytype = v.log ? "log" : "linear";
    box.dataset.xaxis = v.x;
    if (!hasCharts()) return;
    // A chart waits (up to a second) for all its runs' series, rather than being drawn once per arrival.
    if (!ready && !box.draws && performance.now() - box.createdAt < 1000) { setTimeout(() => { if (!box.draws) redraw(box); }, 250); return; }
    const drawn = C.drawMetric(box.plot, lines, {
      xAxis: v.x, smoothing: v.smooth, log: v.log, aggregate: !!(v.group && v.agg && v.name === "compare"),
      revision: (v.name === "run" ? v.run : v.sel.join(",")), datarevision: (box.draws = (box.draws || 0) + 1),
    });
    box.dataset.drawn = String(drawn);
    box.dataset.fetches = String(box.fetches || 0);
    box.dataset.zoomPoints = String(box.zoomPoints || 0);
    box.dataset.zoomed = lines.some((l) => l.zoom) ? "1" : "0";
    box.dataset.draws = String(box.draws);
    box.dataset.ready = ready ? "1" : "0";
    box.dataset.sharp = sharp ? "1" : "0";
    if (!box.listening) {
      box.listening = true;
      C.onZoomOf(box.plot, (range) => onZoom(box, name, range));
    }
    box.entries = entries;
  }

  /** A zoom on a chart asks the daemon for that step range at full resolution (its finer tier). */
  function onZoom(box, name, range) {
    if (!range) return;
    const runs = (box.entries || []).map((e) => e.run);
    if (range === "reset") {
      for (const run of runs) S.zoom.delete(run + "\u0001" + name);
      redraw(box);
      return;
    }
    const v = S.view;
    const [a, b] = range;
    let pending = 0, zoomPoints = 0;
    const generation = (box.zoomGen = (box.zoomGen || 0) + 1);
    for (const run of runs) {
      const store = S.series.get(run);
      const s = store && store.metrics.get(name);
      if (!s || !s.values.length) continue;
      // The steps the range covers: the range itself on a step axis, else found through
      // the x column the chart draws (one held point wider on each side).
      const xs = C.xOf(s, v.x);
      let from = null, to = null;
      if (v.x === "step") { from = a; to = b; }
      else for (let i = 0; i < xs.length; i++) {
        if (xs[i] == null) continue;
        if (xs[i] >= a && from === null) from = i > 0 ? s.steps[i - 1] : s.steps[i];
        if (xs[i] <= b) to = i < xs.length - 1 ? s.steps[i + 1] : s.steps[i];
      }
      if (from === null || to === null || to < from) continue;
      from = Math.floor(from); to = Math.ceil(to);
      pending++;
      query({ q: "metrics", run, names: [name], step_from: from, step_to: to, max_points: MAX_POINTS }, (reply) => {
        pending--;
        if (box.zoomGen !== generation || reply.op !== "result") return;
        const row = reply.rows[0];
        if (row) {
          S.zoom.set(run + "\u0001" + name, { from, to, series: { steps: row.steps, values: row.values.map(num), epochs: row.epochs, ts: row.ts } });
          zoomPoints += row.steps.length;
        }
        if (!pending) {
          box.fetches = (box.fetches || 0) + 1;  // shown in data-fetches once drawn
          box.zoomPoints = zoomPoints;
          redraw(box);
        }
      });
    }
  }

  // -- the compare view ---------------------------------------------------------------------

  function renderCompare(all, charts) {
    const v = S.view;
    const ids = v.sel.filter((id) => S.runs.has(id));
    $("compare-count").textContent = "(" + ids.length + " runs)";
    $("compare-empty").hidden = ids.length > 0;
    for (const id of ids) seriesOf(id);
    const groupIndex = new Map();
    const entries = ids.map((id, i) => {
      const run = S.runs.get(id);
      const group = groupKeyOf(run, v.group);
      if (!groupIndex.has(group)) groupIndex.set(group, groupIndex.size);
      return { run: id, label: run.name || id, colour: C.colour(v.group && v.agg ? groupIndex.get(group) : i), group };
    });
    const names = new Set();
    for (const id of ids) {
      for (const k of Object.keys(S.runs.get(id).metrics || {})) names.add(k);
      const store = S.series.get(id);
      if (store) for (const k of store.metrics.keys()) names.add(k);
    }
    const metricNames = [...names].sort();
    chartBoxes($("compare-charts"), metricNames, (box, name) => drawChart(box, name, entries));
    if (charts) for (const box of $("compare-charts").children) redraw(box);
    renderLegend(ids, metricNames, entries);
    if (all) renderConfigDiff(ids, entries);
    // Parallel coordinates: drawn once the metric charts have all their series, in a frame
    // of their own, and again when the runs, their configs or the chosen metric change.
    const pcKey = [ids.join(","), S.view.pc, S.runsVersion, metricNames.join(",")].join("|");
    const allReady = ids.every((id) => { const st = S.series.get(id); return st && st.sharp; });
    if ((all || pcKey !== S.pcKey) && allReady) {
      S.pcKey = pcKey;
      const pc = $("parcoords");
      pc.draw = () => renderParallel(ids, metricNames);
      S.dirty.delete(pc);
      redraw(pc);
    }
  }

  function renderLegend(ids, metricNames, entries) {
    // Each run's min and max per metric, from its `run` summary (no point is read), asked once
    // its series are in, so the charts' queries go first.
    for (const id of ids) {
      const store = S.series.get(id);
      if (S.summaries.has(id) || !store || !store.sharp) continue;
      S.summaries.set(id, null);
      query({ q: "run", run: id }, (reply) => {
        if (reply.op !== "result" || !S.summaries.has(id)) return;
        S.summaries.set(id, reply.rows[0].metrics || {});
        render("compare");
      });
    }
    const shown = metricNames.slice(0, 8);
    // Rebuilt only when something in it changed (it is redrawn up to 4 times a second while runs stream).
    const signature = JSON.stringify([shown, entries.map((e) => {
      const run = S.runs.get(e.run);
      return [e.run, e.label, e.colour, e.group, run.status, shown.map((m) => fmt((run.metrics || {})[m])), S.summaries.get(e.run) ? 1 : 0];
    })]);
    if ($("legend").signature === signature) return;
    $("legend").signature = signature;
    $("legend").tHead.replaceChildren(el("tr", {}, el("th", {}, "run"), el("th", {}, "status"),
      ...shown.map((m) => el("th", { title: "last (min \u2013 max)" }, m))));
    $("legend").tBodies[0].replaceChildren(...entries.map((e) => {
      const run = S.runs.get(e.run);
      const sums = S.summaries.get(e.run) || {};
      return el("tr", { "data-run": e.run, class: isBad(run.status) ? "bad" : "" },
        el("td", {}, el("span", { class: "swatch", style: "background:" + e.colour }), " ",
          el("a", { href: "#run/" + encodeURIComponent(e.run) }, e.label), e.group ? el("span", { class: "muted" }, " " + e.group) : null),
        el("td", {}, el("span", { class: "status status-" + run.status }, run.status)),
        ...shown.map((m) => {
          const s = sums[m];
          return el("td", { class: "num" }, fmt((run.metrics || {})[m]),
            s ? el("span", { class: "muted small" }, " (" + fmt(s.min) + " \u2013 " + fmt(s.max) + ")") : null);
        }));
    }));
  }

  function renderConfigDiff(ids, entries) {
    const configs = ids.map((id) => flatConfig(S.runs.get(id)));
    const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))].sort();
    const showAll = $("diff-all").checked;
    const rows = [];
    for (const key of keys) {
      const values = configs.map((c) => (key in c ? JSON.stringify(c[key]) : undefined));
      const differs = values.some((x) => x !== values[0]);
      if (!differs && !showAll) continue;
      rows.push(el("tr", { class: differs ? "differs" : "", "data-key": key }, el("th", { scope: "row" }, key),
        ...values.map((x, i) => el("td", { class: differs && x !== values[0] && i > 0 ? "changed" : null }, x === undefined ? "\u2014" : x))));
    }
    $("config-diff").tHead.replaceChildren(el("tr", {}, el("th", {}, "key"),
      ...entries.map((e) => el("th", {}, el("span", { class: "swatch", style: "background:" + e.colour }), " " + e.label))));
    $("config-diff").tBodies[0].replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: ids.length + 1, class: "muted" },
      ids.length < 2 ? "Select two runs or more." : "Every config key is the same."))]));
    $("config-diff").dataset.keys = String(rows.length);
  }

  function renderParallel(ids, metricNames) {
    const select = $("pc-metric");
    const metric = metricNames.includes(S.view.pc) ? S.view.pc : metricNames[0] || "";
    select.replaceChildren(...metricNames.map((m) => el("option", { value: m }, m)));
    select.value = metric;
    const configs = ids.map((id) => flatConfig(S.runs.get(id)));
    const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))].sort()
      .filter((k) => configs.some((c) => JSON.stringify(c[k]) !== JSON.stringify(configs[0][k]))).slice(0, 12);
    const div = $("parcoords");
    div.dataset.axes = String(keys.length + (metric ? 1 : 0));
    if (!hasCharts() || ids.length < 2 || !keys.length || !metric) {
      C.destroy(div);
      div.replaceChildren(el("p", { class: "muted" }, "Needs two runs or more whose configs differ, and a metric."));
      return;
    }
    if (div.firstElementChild && div.firstElementChild.tagName === "P") div.replaceChildren();
    C.drawParallel(div, ids.map((id, i) => ({ label: S.runs.get(id).name || id, config: configs[i],
                                            metric: num((S.runs.get(id).metrics || {})[metric]) })), keys, metric);
  }

  // -- the run view --------------------------------------------------------------------------

  function renderRun(all) {
    const id = S.view.run;
    if (!S.open || S.open.id !== id) openRun(id);
    const open = S.open;
    renderRunHeader(open);
    seriesOf(id);
    const store = S.series.get(id);
    const names = [...new Set([...Object.keys((S.runs.get(id) || {}).metrics || {}), ...(store ? store.metrics.keys() : [])])].sort();
    const entries = [{ run: id, label: (S.runs.get(id) || {}).name || id, colour: C.colour(0), group: "" }];
    chartBoxes($("charts"), names, (box, name) => drawChart(box, name, entries));
    if (all) for (const box of $("charts").children) redraw(box);
  }

  // S.open: {id, gen, runSeq, artifacts, items, itemsSeq, itemsTotal, facets, stats, buffer}
  function openRun(id) {
    const open = { id, gen: S.gen, artifacts: [], artifactsSeq: null, items: [], itemsSeq: null, itemsTotal: 0,
                   facets: [], stats: null, buffer: [] };
    S.open = open;
    for (const k of ["stage", "status", "model", "backend"]) $("item-" + k).value = "";
    $("run-select").checked = S.view.sel.includes(id);
    query({ q: "run", run: id }, (reply) => {
      if (S.open !== open) return;
      if (reply.op !== "result") { $("run-error").hidden = false; $("run-error").textContent = reply.message || reply.code; return; }
      const row = reply.rows[0];
      const known = S.runs.get(id);
      const metrics = Object.fromEntries(Object.entries(row.metrics || {}).map(([k, m]) => [k, m.last]));
      if (!known || (known.updated_seq || 0) <= reply.seq) S.runs.set(id, Object.assign({}, known || {}, row, { metrics, updated_seq: Math.max(reply.seq, (known || {}).updated_seq || 0) }));
      open.artifacts = row.artifacts || [];
      open.artifactsSeq = reply.seq;
      for (const ev of open.buffer) if (ev.type === "artifact" && ev.seq > reply.seq) open.artifacts.push(Object.assign({ seq: ev.seq, ts: ev.ts }, ev.data));
      renderArtifacts(open);
      render("run");
    });
    loadItems(open);
    loadFacets(open);
  }

  function itemFilters() {
    const out = {};
    for (const k of ["stage", "status", "model", "backend"]) { const v = $("item-" + k).value; if (v) out[k] = v; }
    return out;
  }

  function loadItems(open) {
    const filters = itemFilters();
    const done = (failed, all) => {
      if (S.open !== open || all.op !== "result" || (failed && failed.op !== "result")) return;
      const seen = new Set(failed ? failed.rows.map((r) => r.seq) : []);
      open.items = (failed ? failed.rows : []).concat(all.rows.filter((r) => !seen.has(r.seq)));
      open.itemsTotal = all.total;
      open.itemsSeq = failed ? Math.min(failed.seq, all.seq) : all.seq;
      for (const ev of open.buffer) if (ev.type === "item" && ev.seq > open.itemsSeq) addItem(open, ev);
      renderItems(open);
    };
    open.itemsSeq = null;
    const base = Object.assign({ q: "items", run: open.id, limit: ITEMS_SHOWN }, filters);
    if (filters.status) query(base, (all) => done(null, all));
    // Failed items first: asked for on their own, then the rest.
    else query(Object.assign({}, base, { status: "failed" }), (failed) => query(base, (all) => done(failed, all)));
  }

  function loadFacets(open) {
    query({ q: "item_facets", run: open.id }, (reply) => {
      if (S.open !== open || reply.op !== "result") return;
      open.facets = reply.rows;
      renderFacets(open);
    });
    // The daemon's per-stage item statistics, where its `stats` answer has them.
    query({ q: "stats", run: open.id }, (reply) => {
      if (S.open !== open || reply.op !== "result") return;
      open.stats = reply.rows[0] || null;
      renderFacets(open);
    });
  }

  function applyToOpen(ev) {
    const open = S.open;
    if (open.itemsSeq === null || open.artifactsSeq === null) open.buffer.push(ev);
    if (ev.type === "item" && open.itemsSeq !== null && ev.seq > open.itemsSeq) {
      if (matchesItemFilters(ev.data)) { addItem(open, ev); renderItems(open); }
      if (!open.facetTimer) open.facetTimer = setTimeout(() => { open.facetTimer = 0; if (S.open === open) loadFacets(open); }, 1000);
    } else if (ev.type === "artifact" && open.artifactsSeq !== null && ev.seq > open.artifactsSeq) {
      open.artifacts.push(Object.assign({ seq: ev.seq, ts: ev.ts }, ev.data));
      renderArtifacts(open);
    }
    render("run");
  }

  function matchesItemFilters(data) {
    const f = itemFilters();
    return Object.entries(f).every(([k, v]) => (k === "status" ? (data.status || "ok") : data[k]) === v);
  }

  function addItem(open, ev) {
    const item = Object.assign({ seq: ev.seq, ts: ev.ts, status: "ok" }, ev.data);
    if (item.status === "failed") {
      const firstOk = open.items.findIndex((i) => i.status !== "failed");
      open.items.splice(firstOk < 0 ? open.items.length : firstOk, 0, item);
    } else {
      open.items.push(item);
    }
    open.itemsTotal = (open.itemsTotal || 0) + 1;
  }

  function renderRunHeader(open) {
    const run = S.runs.get(open.id) || { id: open.id, status: "unknown" };
    $("run-name").textContent = run.name || run.id;
    const status = $("run-status");
    status.textContent = run.status;
    status.className = "status status-" + run.status;
    status.dataset.status = run.status;
    const meta = [run.id, run.pipeline && "pipeline " + run.pipeline, run.started && "started " + when(run.started),
                  run.finished && "finished " + when(run.finished), duration(run) != null && "took " + fmtDuration(duration(run)),
                  run.user && "by " + run.user, run.host && "on " + run.host].filter(Boolean);
    $("run-meta").textContent = meta.join(" \u00b7 ");
    $("run-tags").replaceChildren(...(run.tags && run.tags.length ? [tagList(run.tags)] : []));
    $("run-notes").textContent = run.notes || "";
    $("run-error").hidden = !run.error;
    $("run-error").textContent = run.error || "";
    $("run-select").checked = S.view.sel.includes(open.id);
    const config = JSON.stringify(run.config || {}, null, 2);
    if ($("config").textContent !== config) $("config").textContent = config;
  }

  function renderFacets(open) {
    for (const k of ["stage", "status", "model", "backend"]) {
      const select = $("item-" + k);
      const current = select.value;
      const values = open.facets.filter((f) => f.field === k && f.value != null);
      select.replaceChildren(el("option", { value: "" }, "all"),
        ...values.map((f) => el("option", { value: f.value }, f.value + " (" + f.count + ")")));
      if (current && !values.some((f) => f.value === current)) select.append(el("option", { value: current }, current));
      select.value = current;
    }
    // Per stage: the daemon's stats answer when it has per-stage fields, else the facets' counts.
    const table = $("stage-summary");
    const stages = statsStages(open.stats);
    let columns, rows;
    if (stages) {
      columns = [...new Set(stages.flatMap((r) => Object.keys(r)))];
      rows = stages;
      table.dataset.source = "stats";
    } else {
      columns = ["stage", "items", "failed", "mean duration"];
      rows = open.facets.filter((f) => f.field === "stage").map((f) => ({ stage: f.value == null ? "(none)" : f.value, items: f.count,
        failed: f.failed, "mean duration": f.mean == null ? null : fmt(f.mean) + " s" }));
      table.dataset.source = "facets";
    }
    table.hidden = !rows.length;
    table.tHead.replaceChildren(el("tr", {}, ...columns.map((c) => el("th", {}, c.replace(/_/g, " ")))));
    table.tBodies[0].replaceChildren(...rows.map((r) => el("tr", { class: r.failed || r.failures ? "warn" : null },
      ...columns.map((c) => el("td", { class: typeof r[c] === "number" ? "num" : null }, fmt(r[c]))))));
  }

  /** Per-stage rows from a `stats` answer: the first field naming stages that holds a list of rows
   *  (or a map of rows by stage), filtered to the open run when the rows name runs. */
  function statsStages(stats) {
    if (!stats) return null;
    for (const [key, value] of Object.entries(stats)) {
      if (!/stage/i.test(key) || value == null || typeof value !== "object") continue;
      let rows = Array.isArray(value) ? value : Object.entries(value).map(([stage, v]) =>
        (v && typeof v === "object" && !Array.isArray(v) ? Object.assign({ stage }, v) : { stage, value: v }));
      rows = rows.filter((r) => r && typeof r === "object" && (!("run" in r) || r.run === S.open.id));
      return rows.map((r) => Object.fromEntries(Object.entries(r).filter(([k, v]) => k !== "run" && (v == null || typeof v !== "object"))));
    }
    return null;
  }

  function renderItems(open) {
    const rows = open.items.slice(0, ITEMS_SHOWN).map((i) =>
      el("tr", { class: i.status === "failed" ? "bad" : "", "data-status": i.status },
        el("td", {}, el("span", { class: "status status-" + (i.status === "failed" ? "failed" : i.status === "ok" ? "completed" : "killed") }, i.status)),
        el("td", {}, i.item || ""), el("td", {}, i.stage || ""), el("td", {}, i.kind || ""),
        el("td", {}, i.model || ""), el("td", {}, i.backend || ""),
        el("td", { class: "num" }, i.duration != null ? fmt(i.duration) + " s" : ""), el("td", {}, i.error || "")));
    $("items").tBodies[0].replaceChildren(...rows);
    $("item-count").textContent = "(" + (open.itemsTotal || open.items.length) + (open.items.length > ITEMS_SHOWN ? ", " + ITEMS_SHOWN + " shown" : "") + ")";
  }

  // A stored artifact (its bytes in the daemon's artifact store) downloads from the daemon.
  // With a token, the link fetches with it (a plain link cannot send a header) and saves the bytes.
  function storedLink(a) {
    const name = String(a.path || "artifact").split("/").pop() || "artifact";
    const link = el("a", { href: "/api/blobs/" + encodeURIComponent(a.blob), download: name, "data-blob": a.blob }, a.path);
    if (token) link.onclick = async (e) => {
      e.preventDefault();
      const res = await fetch(link.getAttribute("href"), { headers: { Authorization: "Bearer " + token } });
      if (!res.ok) { link.title = "download failed: " + res.status; return; }
      const url = URL.createObjectURL(await res.blob());
      const save = el("a", { href: url, download: name });
      document.body.append(save); save.click(); save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    };
    return link;
  }

  function renderArtifacts(open) {
    $("artifacts").tBodies[0].replaceChildren(...open.artifacts.map((a) => {
      // Stored in the daemon: a download from it; at a web address: from there; a local path is shown to copy.
      const link = typeof a.blob === "string" && a.blob.startsWith("sha256:") ? storedLink(a)
        : /^https?:\/\//i.test(a.path || "") ? el("a", { href: a.path, download: "", rel: "noopener" }, a.path) : el("code", {}, a.path);
      return el("tr", {}, el("td", {}, a.kind), el("td", {}, link), el("td", { class: "num" }, a.size != null ? fmt(a.size) : ""));
    }));
  }

  // -- wiring ------------------------------------------------------------------------------

  function applyTheme(mode) {
    if (mode === "auto") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.dataset.theme = mode;
    $("theme").textContent = "theme: " + mode;
    for (const box of document.querySelectorAll(".chart")) redraw(box);
    if (S.view && S.view.name === "compare") render("all");
  }

  function wire() {
    let mode = localStorage.getItem("tracklog-theme") || "auto";
    applyTheme(mode);
    $("theme").onclick = () => {
      mode = { auto: "light", light: "dark", dark: "auto" }[mode];
      localStorage.setItem("tracklog-theme", mode);
      applyTheme(mode);
    };
    const go = (name) => (e) => { e.preventDefault(); setView({ name, run: null }, true); };
    $("home").onclick = go("runs");
    $("nav-runs").onclick = go("runs");
    $("nav-compare").onclick = go("compare");
    for (const b of document.querySelectorAll("button.back")) b.onclick = () => setView({ name: "runs", run: null }, true);
    $("compare-selected").onclick = () => setView({ name: "compare" }, true);
    $("clear-selection").onclick = () => setView({ sel: [] });
    $("page-prev").onclick = () => setView({ page: Math.max(0, S.view.page - 1) });
    $("page-next").onclick = () => setView({ page: S.view.page + 1 });
    const filter = $("filter");
    filter.onkeydown = (e) => { if (e.key === "Enter") setView({ filter: filter.value.trim(), page: 0 }); };
    filter.onchange = () => setView({ filter: filter.value.trim(), page: 0 });
    const search = $("search");
    let searchTimer = 0;
    search.oninput = () => { clearTimeout(searchTimer); searchTimer = setTimeout(() => setView({ q: search.value.trim(), page: 0 }), 300); };
    search.onkeydown = (e) => { if (e.key === "Enter") { clearTimeout(searchTimer); setView({ q: search.value.trim(), page: 0 }); } };
    $("group").onchange = () => setView({ group: $("group").value, page: 0 });
    $("xaxis").onchange = () => setView({ x: $("xaxis").value });
    $("smooth").oninput = () => setView({ smooth: Number($("smooth").value) });
    $("log").onchange = () => setView({ log: $("log").checked });
    $("agg").onchange = () => setView({ agg: $("agg").checked });
    $("grid-cols").onchange = () => setView({ gridCols: $("grid-cols").value });
    $("pc-metric").onchange = () => setView({ pc: $("pc-metric").value });
    $("diff-all").onchange = () => render("all");
    $("run-select").onchange = () => toggleSelected(S.view.run, $("run-select").checked);
    $("reset-zoom").onclick = () => {
      S.zoom.clear();
      for (const box of document.querySelectorAll(".chart")) {
        box.zoomGen = (box.zoomGen || 0) + 1;
        redraw(box);
        if (box.plot) C.setZoom(box.plot, null, false);
      }
    };
    for (const k of ["stage", "status", "model", "backend"]) $("item-" + k).onchange = () => { if (S.open) loadItems(S.open); };
    const onRoute = () => { const next = parseHash(); if (hashOf(next) !== hashOf(S.view)) applyView(next); };
    window.addEventListener("hashchange", onRoute);
    window.addEventListener("popstate", onRoute);
  }

  document.addEventListener("DOMContentLoaded", () => {
    mark("dom");
    $("no-charts").hidden = hasCharts();
    wire();
    applyView(parseHash());
    connect();
  });
})();
