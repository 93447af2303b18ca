// tracklog web console: follows the daemon over its WebSocket (JSON frames).
// On connect: hello, a `runs` query for the initial state, then one subscription from
// the seq that query answered, so no event falls in between. After a reconnect it
// subscribes again from the last seq it saw. No dependencies, no build step.
"use strict";

(function () {
  const MAX_POINTS = 2000;     // points per metric asked from the daemon when a run opens
  const MAX_ITEMS_SHOWN = 500;
  const token = new URLSearchParams(location.search).get("token");
  const wsUrl = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws";

  const state = {
    runs: new Map(),        // run id -> summary (as the `runs` query gives it)
    lastSeq: null,          // seq of the last event applied; null until the first query answers
    ws: null,
    refs: 1,
    pending: new Map(),     // ref -> callback(reply)
    retry: 0,
    open: null,             // the run shown in detail, see openRun
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return node;
  };

  // JSON carries NaN and infinities as strings.
  const num = (v) => v === "NaN" ? NaN : v === "Infinity" ? Infinity : v === "-Infinity" ? -Infinity : v;
  const fmt = (v) => {
    v = num(v);
    if (typeof v !== "number") return v == null ? "" : String(v);
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
    return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e6 ? v.toPrecision(4).replace(/\.?0+$/, "") : v.toExponential(3);
  };
  const when = (ts) => ts ? new Date(ts * 1000).toLocaleString() : "";
  const isBad = (status) => status === "failed" || status === "lost";

  // -- connection ----------------------------------------------------------------------

  function setConn(text) {
    const c = $("conn");
    c.textContent = text;
    c.dataset.state = text;
    c.className = "conn conn-" + text.replace(/ /g, "-");
  }

  function send(msg, onReply) {
    if (onReply) { msg.ref = state.refs++; state.pending.set(msg.ref, onReply); }
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  function connect() {
    setConn(state.lastSeq === null ? "connecting" : "reconnecting");
    const ws = new WebSocket(wsUrl);
    state.ws = ws;
    ws.onopen = () => {
      const hello = { op: "hello", protocol: 1, client: "tracklog-web" };
      if (token) hello.token = token;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (e) => onMessage(JSON.parse(e.data));
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.pending.clear();
      setConn("reconnecting");
      const delay = Math.min(5000, 100 * 2 ** state.retry++) * (0.5 + Math.random() / 2);
      setTimeout(connect, delay);
    };
  }

  function onMessage(msg) {
    if (msg.ref != null && state.pending.has(msg.ref)) {
      const cb = state.pending.get(msg.ref);
      state.pending.delete(msg.ref);
      cb(msg);
      return;
    }
    switch (msg.op) {
      case "welcome":
        state.retry = 0;
        // A log shorter than what we saw is another database: start over.
        if (state.lastSeq === null || msg.head < state.lastSeq) loadRuns(); else subscribe();
        break;
      case "events":
        for (const ev of msg.events) applyEvent(ev);
        render();
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

  function loadRuns() {
    send({ op: "query", q: "runs", limit: 500 }, (reply) => {
      if (reply.op !== "result") { setConn("error: " + reply.code); return; }
      state.runs = new Map(reply.rows.map((r) => [r.id, r]));
      state.lastSeq = reply.seq;
      render();
      subscribe();
    });
  }

  function subscribe() {
    setConn("catching up");
    send({ op: "subscribe", from_seq: state.lastSeq }, (reply) => {
      if (reply.op !== "subscribed") setConn("error: " + reply.code);
    });
    // After a reconnect the open run's detail is read again, at a newer seq.
    if (state.open && state.open.loadedWith !== state.ws) openRun(state.open.id);
  }

  // -- events --------------------------------------------------------------------------

  function applyEvent(ev) {
    if (state.lastSeq !== null && ev.seq <= state.lastSeq) return;
    state.lastSeq = ev.seq;
    const data = ev.data || {};
    if (ev.run != null) {
      let run = state.runs.get(ev.run);
      if (!run) {
        run = { id: ev.run, status: "running", metrics: {}, config: {}, n_items: 0, n_failed: 0, started: ev.ts, tags: [] };
        state.runs.set(ev.run, run);
      }
      run.last_ts = ev.ts;
      switch (ev.type) {
        case "run.started":
          for (const k of ["name", "pipeline", "user", "host", "notes", "session", "parent"]) if (data[k] != null) run[k] = data[k];
          if (data.config) run.config = data.config;
          if (data.tags) run.tags = data.tags;
          run.started = ev.ts;
          break;
        case "run.updated":
          for (const k of ["name", "notes"]) if (data[k] != null) run[k] = data[k];
          if (data.config) run.config = Object.assign({}, run.config, data.config);
          if (data.add_tags) run.tags = [...new Set([...(run.tags || []), ...data.add_tags])].sort();
          if (data.remove_tags) run.tags = (run.tags || []).filter((t) => !data.remove_tags.includes(t));
          if (data.status) { run.status = data.status; run.finished = null; run.error = null; }
          break;
        case "run.finished":
          run.status = data.status;
          run.error = data.error || null;
          run.finished = ev.ts;
          break;
        case "run.deleted":
          state.runs.delete(ev.run);
          break;
        case "metrics":
          run.metrics = run.metrics || {};
          for (const [k, v] of Object.entries(data.values || {})) run.metrics[k] = v;
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
    if (state.open && state.open.id === ev.run) applyToOpen(ev);
  }

  // -- the run list ----------------------------------------------------------------------

  function render() {
    $("head").textContent = "seq " + (state.lastSeq || 0);
    $("head").dataset.seq = state.lastSeq || 0;
    const rows = [...state.runs.values()].sort((a, b) => (b.started || 0) - (a.started || 0));
    const body = $("runs").tBodies[0];
    body.replaceChildren(...rows.map(runRow));
    $("no-runs").hidden = rows.length > 0;
    $("run-count").textContent = rows.length ? "(" + rows.length + ")" : "";
    if (state.open) renderOpenHeader();
  }

  function runRow(run) {
    const metrics = Object.entries(run.metrics || {}).slice(0, 6).map(([k, v]) =>
      el("span", { class: "metric" }, k + " ", el("b", {}, fmt(v))));
    const items = (run.n_items || 0) + (run.n_failed ? " (" + run.n_failed + " failed)" : "");
    const tr = el("tr", { class: isBad(run.status) ? "bad" : "", "data-run": run.id, "data-status": run.status },
      el("td", {}, el("span", { class: "status status-" + run.status }, run.status)),
      el("td", {}, run.name || run.id),
      el("td", {}, run.pipeline || ""),
      el("td", {}, when(run.started)),
      el("td", {}, items),
      el("td", {}, ...metrics));
    tr.onclick = () => { location.hash = "run/" + encodeURIComponent(run.id); };
    return tr;
  }

  // -- one run ---------------------------------------------------------------------------

  // state.open: {id, loadedWith, series: name -> {steps, values, seq, chart}, itemsSeq, items,
  //              artifactsSeq, artifacts, buffer: events that came before the answers}
  function openRun(id) {
    const ws = state.ws && state.ws.readyState === WebSocket.OPEN ? state.ws : null;
    const open = { id, loadedWith: ws, series: new Map(), metricsSeq: null, items: [], itemsSeq: null,
                   artifacts: [], artifactsSeq: null, buffer: [] };
    state.open = open;
    $("runs-pane").hidden = true;
    $("run-pane").hidden = false;
    $("charts").replaceChildren();
    renderOpenHeader();
    const replay = (seq, apply) => { for (const ev of open.buffer) if (ev.seq > seq) apply(ev); };
    send({ op: "query", q: "run", run: id }, (reply) => {
      if (state.open !== open) return;
      if (reply.op === "result") { state.runs.set(id, Object.assign(state.runs.get(id) || {}, reply.rows[0])); }
      renderOpenHeader();
    });
    send({ op: "query", q: "metrics", run: id, max_points: MAX_POINTS }, (reply) => {
      if (state.open !== open || reply.op !== "result") return;
      for (const row of reply.rows) {
        const s = seriesFor(open, row.name);
        s.steps = row.steps.slice();
        s.values = row.values.map(num);
      }
      open.metricsSeq = reply.seq;
      replay(reply.seq, (ev) => ev.type === "metrics" && addPoints(open, ev));
      drawCharts(open);
    });
    loadItems(open, replay);
    send({ op: "query", q: "artifacts", run: id }, (reply) => {
      if (state.open !== open || reply.op !== "result") return;
      open.artifacts = reply.rows;
      open.artifactsSeq = reply.seq;
      replay(reply.seq, (ev) => ev.type === "artifact" && open.artifacts.push(Object.assign({ seq: ev.seq }, ev.data)));
      renderArtifacts(open);
    });
  }

  function loadItems(open, replay) {
    // Failed items first: ask for them on their own, then the rest.
    send({ op: "query", q: "items", run: open.id, status: "failed", limit: MAX_ITEMS_SHOWN }, (failed) => {
      send({ op: "query", q: "items", run: open.id, limit: MAX_ITEMS_SHOWN }, (all) => {
        if (state.open !== open || failed.op !== "result" || all.op !== "result") return;
        const seen = new Set(failed.rows.map((r) => r.seq));
        open.items = failed.rows.concat(all.rows.filter((r) => !seen.has(r.seq)));
        open.itemsTotal = all.total;
        open.itemsSeq = Math.min(failed.seq, all.seq);
        replay(open.itemsSeq, (ev) => ev.type === "item" && addItem(open, ev));
        renderItems(open);
      });
    });
  }

  function closeRun() {
    state.open = null;
    $("run-pane").hidden = true;
    $("runs-pane").hidden = false;
    render();
  }

  function applyToOpen(ev) {
    const open = state.open;
    if (open.metricsSeq === null || open.itemsSeq === null || open.artifactsSeq === null) open.buffer.push(ev);
    if (ev.type === "metrics" && open.metricsSeq !== null && ev.seq > open.metricsSeq) {
      addPoints(open, ev);
      drawCharts(open);
    } else if (ev.type === "item" && open.itemsSeq !== null && ev.seq > open.itemsSeq) {
      addItem(open, ev);
      renderItems(open);
    } else if (ev.type === "artifact" && open.artifactsSeq !== null && ev.seq > open.artifactsSeq) {
      open.artifacts.push(Object.assign({ seq: ev.seq, ts: ev.ts }, ev.data));
      renderArtifacts(open);
    }
  }

  function addPoints(open, ev) {
    const step = ev.data.step;
    for (const [name, v] of Object.entries(ev.data.values || {})) {
      const s = seriesFor(open, name);
      s.steps.push(step != null ? step : (s.steps.length ? s.steps[s.steps.length - 1] + 1 : 0));
      s.values.push(num(v));
    }
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

  function seriesFor(open, name) {
    let s = open.series.get(name);
    if (!s) {
      const canvas = el("canvas", { width: 360, height: 160 });
      const last = el("span", { class: "muted" });
      const box = el("div", { class: "chart", "data-metric": name, "data-points": "0" }, el("h4", {}, name, last), canvas);
      s = { steps: [], values: [], canvas, box, last };
      open.series.set(name, s);
      const charts = $("charts");
      const after = [...charts.children].find((c) => c.dataset.metric > name);
      charts.insertBefore(box, after || null);
    }
    return s;
  }

  function renderOpenHeader() {
    const run = state.runs.get(state.open.id) || { id: state.open.id, status: "unknown" };
    $("run-name").textContent = run.name || run.id;
    const status = $("run-status");
    status.textContent = run.status;
    status.className = "status status-" + run.status;
    status.dataset.status = run.status;
    const meta = [run.id, run.pipeline && "pipeline " + run.pipeline, run.started && "started " + when(run.started),
                  run.finished && "finished " + when(run.finished), run.user && "by " + run.user,
                  run.tags && run.tags.length && "tags " + run.tags.join(", ")].filter(Boolean);
    $("run-meta").textContent = meta.join(" · ");
    $("run-error").hidden = !run.error;
    $("run-error").textContent = run.error || "";
    $("config").textContent = JSON.stringify(run.config || {}, null, 2);
  }

  function renderItems(open) {
    const rows = open.items.slice(0, MAX_ITEMS_SHOWN).map((i) =>
      el("tr", { class: i.status === "failed" ? "bad" : "", "data-status": i.status },
        el("td", {}, el("span", { class: "status status-" + (i.status === "failed" ? "failed" : "completed") }, i.status)),
        el("td", {}, i.item || ""), el("td", {}, i.stage || ""), el("td", {}, i.kind || ""),
        el("td", {}, i.duration != null ? fmt(i.duration) + " s" : ""), el("td", {}, i.error || "")));
    $("items").tBodies[0].replaceChildren(...rows);
    $("item-count").textContent = "(" + (open.itemsTotal || open.items.length) + ")";
  }

  function renderArtifacts(open) {
    $("artifacts").tBodies[0].replaceChildren(...open.artifacts.map((a) =>
      el("tr", {}, el("td", {}, a.kind), el("td", {}, a.path), el("td", {}, a.size != null ? a.size : ""))));
  }

  // -- charts: a line per metric on a canvas, redrawn at most once a frame ----------------

  let drawPending = false;
  function drawCharts(open) {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      if (state.open !== open) return;
      for (const s of open.series.values()) drawChart(s);
    });
  }

  function drawChart(s) {
    const { canvas, steps, values } = s;
    s.box.dataset.points = String(values.length);
    s.last.textContent = values.length ? fmt(values[values.length - 1]) : "";
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, L = 64, R = 8, T = 8, B = 20;
    ctx.clearRect(0, 0, W, H);
    let lo = Infinity, hi = -Infinity, x0 = Infinity, x1 = -Infinity;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) continue;
      lo = Math.min(lo, v); hi = Math.max(hi, v);
      x0 = Math.min(x0, steps[i]); x1 = Math.max(x1, steps[i]);
    }
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6b7480";
    ctx.strokeStyle = "#dde1e6";
    ctx.strokeRect(L, T, W - L - R, H - T - B);
    if (lo > hi) { ctx.fillText("no points", L + 8, T + 16); return; }
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const Y = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
    ctx.textAlign = "right";
    ctx.fillText(fmt(hi), L - 4, T + 8);
    ctx.fillText(fmt(lo), L - 4, H - B);
    ctx.textAlign = "left";
    ctx.fillText(String(x0), L, H - 6);
    ctx.textAlign = "right";
    ctx.fillText(String(x1), W - R, H - 6);
    ctx.strokeStyle = "#2463d6";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false, drawn = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isFinite(v)) { pen = false; continue; }
      if (pen) ctx.lineTo(X(steps[i]), Y(v)); else ctx.moveTo(X(steps[i]), Y(v));
      pen = true;
      drawn++;
    }
    ctx.stroke();
    if (drawn === 1) {
      ctx.fillStyle = "#2463d6";
      for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) ctx.fillRect(X(steps[i]) - 2, Y(values[i]) - 2, 4, 4);
    }
    s.box.dataset.drawn = String(drawn);
  }

  // -- routing: #run/ID opens a run ----------------------------------------------------------

  function route() {
    const m = location.hash.match(/^#run\/(.+)$/);
    if (m) openRun(decodeURIComponent(m[1])); else if (state.open) closeRun();
  }

  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => {
    $("back").onclick = () => { location.hash = ""; };
    connect();
    if (location.hash) route();
  });
})();
