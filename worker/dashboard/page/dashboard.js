// textworker dashboard: fetches the JSON API next to this page and draws SVG charts.
// Every value from the database is inserted as text (never as HTML): payloads are untrusted input.
"use strict";

const BASE = location.pathname.replace(/[^/]*$/, "");
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d", "#ea580c"];
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { pipeline: null, window: "24h", tab: "overview", samples: { stack: [], before: null }, dl: { stack: [], before: null, next: null }, liveTimer: null };

// ------------------------------------------------------------------ small helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : typeof n === "number" ? (Number.isInteger(n) ? n.toLocaleString("en-US") : n.toLocaleString("en-US", { maximumFractionDigits: 2 })) : String(n));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const time = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 16);
const timeFormat = (span) => (span <= 2 * 86400 ? (t) => new Date(t * 1000).toISOString().slice(11, 16) : (t) => new Date(t * 1000).toISOString().slice(5, 16).replace("T", " "));
const widthOf = (el, fallback) => Math.max(320, (el && el.clientWidth) || fallback);
const bytes = (b) => (b >= 1 << 30 ? (b / (1 << 30)).toFixed(2) + " GiB" : (b / (1 << 20)).toFixed(1) + " MiB");

async function api(path, params, options) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) if (value !== null && value !== undefined && value !== "") query.set(key, value);
  const url = BASE + "api/" + path + (query.toString() ? "?" + query : "");
  const response = await fetch(url, { credentials: "same-origin", headers: { "X-Textworker": "1", "Content-Type": "application/json" }, ...(options || {}) });
  if (response.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function replace(id, ...nodes) { const el = $(id); el.replaceChildren(...nodes); return el; }
function empty(text) { return h("div", { class: "empty" }, text); }

function table(columns, rows, attrs) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)));
  const body = rows.map((row) => h("tr", row._attrs || {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.render ? c.render(row) : fmt(row[c.key])))));
  return h("table", attrs || {}, h("thead", {}, head), h("tbody", {}, body));
}

// ------------------------------------------------------------------ charts (SVG)

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// series: [{name, points: [[x, y], ...], dashed, color}]; x is Unix seconds (time axis) or a number.
function lineChart(id, series, opts) {
  const o = Object.assign({ width: widthOf($(id), 640), height: 220, yFormat: fmt, xFormat: null, xMin: null, xMax: null, yMax: null }, opts || {});
  const all = series.flatMap((x) => x.points);
  if (!all.length) return replace(id, empty(o.empty || "no data in this window"));
  const pad = { l: 60, r: 16, t: 10, b: 26 };
  const xs = all.map((p) => p[0]);
  const x0 = o.xMin ?? Math.min(...xs), x1 = Math.max(o.xMax ?? Math.max(...xs), x0 + 1);
  o.xFormat = o.xFormat || timeFormat(x1 - x0);
  const yMax = o.yMax ?? niceMax(Math.max(...all.map((p) => p[1])));
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (o.width - pad.l - pad.r);
  const Y = (y) => o.height - pad.b - (y / yMax) * (o.height - pad.t - pad.b);
  const svg = s("svg", { viewBox: `0 0 ${o.width} ${o.height}`, role: "img", "data-chart": id });
  const grid = s("g", { class: "grid" }), axis = s("g", { class: "axis" });
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    grid.append(s("line", { x1: pad.l, x2: o.width - pad.r, y1: Y(v), y2: Y(v) }));
    axis.append(s("text", { x: pad.l - 6, y: Y(v) + 4, "text-anchor": "end" }, o.yFormat(v)));
  }
  const ticks = o.width < 500 ? 2 : 4;
  for (let i = 0; i <= ticks; i++) {
    const v = x0 + ((x1 - x0) * i) / ticks;
    axis.append(s("text", { x: X(v), y: o.height - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, o.xFormat(v)));
  }
  svg.append(grid, axis);
  const legend = h("div", { class: "legend" });
  series.forEach((line, index) => {
    const color = line.color || COLORS[index % COLORS.length];
    const pts = [...line.points].sort((a, b) => a[0] - b[0]);
    const g = s("g", { class: "series", "data-series": line.name, stroke: color, fill: color });
    g.append(s("polyline", { points: pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "), fill: "none", "stroke-width": 2,
      "stroke-dasharray": line.dashed ? "5 4" : null }));
    for (const p of pts) {
      g.append(s("circle", { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.5, "data-x": p[0], "data-value": p[1] },
        s("title", {}, `${line.name} · ${time(p[0])}: ${o.yFormat(p[1])}${p[2] !== undefined ? " (" + p[2] + ")" : ""}`)));
    }
    svg.append(g);
    const item = h("span", {}, line.name);
    item.style.setProperty("--c", color);
    legend.append(item);
  });
  return replace(id, svg, legend);
}

// items: [{label, value, title}]
function barChart(id, items, opts) {
  const target = typeof id === "string" ? $(id) : id;
  const o = Object.assign({ width: widthOf(target, 640), format: fmt, barHeight: 22 }, opts || {});
  if (!items.length) { target.replaceChildren(empty(o.empty || "nothing yet")); return target; }
  const labelWidth = 170, valueWidth = 90;
  const height = items.length * (o.barHeight + 6) + 4;
  const max = Math.max(...items.map((i) => i.value), 1);
  const chartId = o.chartId || (typeof id === "string" ? id : "bars");
  const svg = s("svg", { viewBox: `0 0 ${o.width} ${height}`, role: "img", "data-chart": chartId });
  items.forEach((item, index) => {
    const y = index * (o.barHeight + 6) + 2;
    const w = Math.max(1, ((o.width - labelWidth - valueWidth) * item.value) / max);
    const label = item.label.length > 26 ? item.label.slice(0, 25) + "…" : item.label;
    svg.append(s("g", { class: "bar", "data-label": item.label, "data-value": item.value },
      s("title", {}, item.title || `${item.label}: ${o.format(item.value)}`),
      s("text", { x: labelWidth - 8, y: y + o.barHeight / 2 + 4, "text-anchor": "end" }, label),
      s("rect", { x: labelWidth, y, width: w.toFixed(1), height: o.barHeight, rx: 3, fill: item.color || COLORS[index % COLORS.length] }),
      s("text", { x: labelWidth + w + 6, y: y + o.barHeight / 2 + 4, class: "bar-value" }, o.format(item.value))));
  });
  target.replaceChildren(svg);
  return target;
}

// ------------------------------------------------------------------ overview

function kpi(key, label, value, sub) {
  return h("div", { class: "kpi", "data-kpi": key, "data-value": value }, h("div", { class: "label" }, label), h("div", { class: "value" }, fmt(value)), sub ? h("div", { class: "sub" }, sub) : null);
}

async function loadOverview() {
  const p = { pipeline: state.pipeline };
  const w = { pipeline: state.pipeline, window: state.window };
  const [overview, labels, throughput, spam, runs] = await Promise.all([
    api("overview", p), api("labels", p), api("throughput", w), api("spam-rate", w), api("runs", { ...p, limit: 50 })]);
  const last = overview.last_run;
  replace("kpis",
    kpi("documents", "documents", overview.documents),
    kpi("results", "results", overview.results, overview.stages.map((st) => `${st.name} ${fmt(st.results)}`).join(" · ")),
    kpi("dead_letters", "dead letters", overview.dead_letters, `${fmt(overview.dead_letters_requeued)} marked for requeue`),
    overview.spam ? kpi("spam", "spam", overview.spam.spam, `${pct(overview.spam.rate)} of ${fmt(overview.spam.total)} (${overview.spam.stage})`) : null,
    kpi("runs", "runs", overview.runs, last ? `last: ${last.status}, ${fmt(last.docs_per_s)} docs/s` : "none yet"));

  const series = Object.entries(throughput.series).map(([name, points]) => ({ name, points }));
  lineChart("chart-throughput", series, { xMin: throughput.start, xMax: throughput.end,
    empty: "no results in this window", yFormat: (v) => fmt(Math.round(v)) });
  $("chart-throughput").append(h("div", { class: "muted" }, `results per ${throughput.bucket_s >= 60 ? throughput.bucket_s / 60 + " min" : throughput.bucket_s + " s"}`));

  if (spam.stage) {
    lineChart("chart-spam", [{ name: `${spam.stage}: share labelled ${spam.label}`, points: spam.points.map((p) => [p[0], p[3], `${p[2]} of ${p[1]}`]) }],
      { xMin: spam.start, xMax: spam.end, yMax: 1, yFormat: pct, empty: "no spam verdicts in this window" });
  } else replace("chart-spam", empty("this pipeline has no spam stage"));

  const chronological = [...runs.runs].reverse().filter((r) => r.started_at);
  const latency = [];
  overview.stages.forEach((st, index) => {
    const color = COLORS[index % COLORS.length];
    const pick = (key) => chronological.filter((r) => r.stages[st.name] && r.stages[st.name][key] !== null && r.stages[st.name][key] !== undefined)
      .map((r) => [Date.parse(r.started_at) / 1000, r.stages[st.name][key]]);
    latency.push({ name: `${st.name} p50`, points: pick("latency_p50_ms"), color });
    latency.push({ name: `${st.name} p95`, points: pick("latency_p95_ms"), color, dashed: true });
  });
  lineChart("chart-latency", latency.filter((x) => x.points.length), { yFormat: (v) => fmt(Math.round(v)) + " ms", empty: "no finished runs with latency figures" });

  const labelCards = labels.stages.map((st) => h("div", { class: "card", "data-stage": st.name }, h("h3", {}, `${st.name} (${st.kind})`), h("div")));
  replace("labels", ...(labelCards.length ? labelCards : [empty("no classify or spam stages")]));
  labels.stages.forEach((st, i) => barChart(labelCards[i].lastChild, st.labels.map((l) => ({ label: l.label, value: l.count })), { chartId: "labels-" + st.name }));

  replace("runs", runs.runs.length ? table([
    { title: "run", key: "run_id" }, { title: "status", render: (r) => h("span", { class: "badge " + r.status }, r.status) },
    { title: "started", render: (r) => (r.started_at || "").replace("T", " ").slice(0, 19) },
    { title: "documents", key: "docs", num: true }, { title: "dead letters", key: "dead_letters", num: true },
    { title: "docs/s", key: "docs_per_s", num: true },
    { title: "models", render: (r) => Object.values(r.stages).map((x) => x.model_version).filter(Boolean).join(", ") },
  ], runs.runs.slice(0, 20)) : empty("no runs yet"));
}

// ------------------------------------------------------------------ samples

async function loadSampleStages() {
  const overview = await api("overview", { pipeline: state.pipeline });
  const stages = overview.stages.filter((st) => st.kind === "qa" || st.kind === "translate");
  const select = $("sample-stage");
  const current = select.value;
  select.replaceChildren(...stages.map((st) => h("option", { value: st.name, selected: st.name === current }, `${st.name} (${st.kind})`)));
  return stages.length;
}

async function loadSamples() {
  if (!(await loadSampleStages())) return replace("samples", empty("this pipeline has no QA or translation stage"));
  const page = await api("samples", { pipeline: state.pipeline, stage: $("sample-stage").value, before: state.samples.before, limit: 20 });
  state.samples.next = page.next_before;
  const text = (r) => h("div", { class: "clip" }, r.text);
  const columns = page.kind === "qa"
    ? [{ title: "document", key: "doc_id" }, { title: "text", render: text }, { title: "question", key: "question" },
       { title: "answer", render: (r) => (r.no_answer ? h("span", { class: "muted" }, "(no answer)") : r.answer) }, { title: "score", key: "score", num: true }, { title: "model", key: "model_version" }]
    : [{ title: "document", key: "doc_id" }, { title: "text", render: text }, { title: "translation", render: (r) => h("div", { class: "clip" }, r.translation) },
       { title: "to", key: "target_lang" }, { title: "model", key: "model_version" }];
  replace("samples", page.items.length ? table(columns, page.items, { "data-table": "samples" }) : empty("no results"));
}

// ------------------------------------------------------------------ dead letters

async function loadDeadLetters() {
  const reasons = await api("dead-letters/reasons", { pipeline: state.pipeline });
  barChart("chart-reasons", reasons.reasons.map((r) => ({ label: `${r.reason} (${r.stage})`, value: r.count, title: `${r.reason} at ${r.stage}: ${r.count}, ${r.requeued} marked for requeue` })),
    { empty: "no dead letters" });
  const select = $("dl-reason");
  const current = select.value;
  const names = [...new Set(reasons.reasons.map((r) => r.reason))];
  select.replaceChildren(h("option", { value: "" }, "all"), ...names.map((n) => h("option", { value: n, selected: n === current }, n)));
  const page = await api("dead-letters", { pipeline: state.pipeline, reason: select.value, status: $("dl-status").value, before: state.dl.before, limit: 50 });
  state.dl.next = page.next_before;
  const rows = page.items.map((r) => ({ ...r, _attrs: { "data-id": r.id } }));
  replace("dead-letters", rows.length ? table([
    { title: "", render: (r) => h("input", { type: "checkbox", class: "dl-pick", value: r.id, disabled: !!r.requeued_at }) },
    { title: "input", key: "ref" }, { title: "stage", key: "stage" }, { title: "reason", key: "reason" },
    { title: "detail", render: (r) => h("div", { class: "clip" }, r.detail) }, { title: "payload", render: (r) => h("div", { class: "clip" }, r.payload) },
    { title: "when", render: (r) => (r.updated_at || "").replace("T", " ").slice(0, 19) },
    { title: "requeue", render: (r) => (r.requeued_at ? h("span", { class: "badge" }, "marked") : h("span", { class: "muted" }, "pending")) },
  ], rows, { "data-table": "dead-letters" }) : empty("no dead letters match"));
}

async function requeue(body) {
  const result = await api("dead-letters/requeue", { pipeline: state.pipeline }, { method: "POST", body: JSON.stringify(body) });
  $("dl-message").textContent = `${result.marked} marked for requeue. ${result.next}`;
  await loadDeadLetters();
}

// ------------------------------------------------------------------ models

const HEADLINE = ["f1_spam", "macro_f1", "accuracy", "f1", "exact_match", "bleu", "chrf"];

function headline(metrics) {
  for (const key of HEADLINE) if (typeof metrics[key] === "number") return [key, metrics[key]];
  const any = Object.entries(metrics).find(([, v]) => typeof v === "number");
  return any || [null, null];
}

async function loadModels() {
  const data = await api("models", { events: 200 });
  const families = [...new Set(data.versions.map((v) => v.name))];
  const charts = families.map((name) => {
    const versions = data.versions.filter((v) => v.name === name);
    const [key] = headline(versions.map((v) => v.metrics).find((m) => headline(m)[0]) || {});
    const box = h("div", { class: "card", "data-model": name }, h("h3", {}, `${name}: ${key || "no metrics"} by version (champion green, retired grey)`), h("div"));
    const items = versions.filter((v) => key && typeof v.metrics[key] === "number").map((v) => ({
      label: v.version, value: v.metrics[key], color: v.status === "champion" ? "#059669" : v.status === "retired" ? "#9ca3af" : "#d97706",
      title: `${v.version} (${v.status}): ${key} ${v.metrics[key]}` }));
    return { box, draw: () => barChart(box.lastChild, items, { chartId: "model-" + name, empty: "no version has metrics" }) };
  });
  replace("model-charts", ...(charts.length ? charts.map((c) => c.box) : [empty("no models registered yet (the registry fills when models are trained and promoted)")]));
  charts.forEach((c) => c.draw());
  replace("model-versions", data.versions.length ? table([
    { title: "model", key: "name" }, { title: "version", key: "version" }, { title: "stage", key: "stage" },
    { title: "status", render: (v) => h("span", { class: "badge " + v.status }, v.status) },
    { title: "metrics", render: (v) => Object.entries(v.metrics).filter(([, x]) => typeof x === "number").slice(0, 6).map(([k, x]) => `${k} ${fmt(x)}`).join(" · ") },
    { title: "reference sets", render: (v) => h("div", { "data-reference-sets": v.version }, ...(v.reference_sets || []).map((r) => {
      const m = (v.reference_metrics || {})[r.name] || {};
      const [key, value] = headline(m);
      return h("div", { "data-set": r.name, title: `sha256 ${r.sha256}` }, `${r.name} (${r.role}, ${r.rows} rows)` + (key ? `: ${key} ${fmt(value)}` : ""));
    })) },
    { title: "gate per set", render: (v) => h("div", { "data-gate-sets": v.version }, ...(v.gate_sets || []).map((g) =>
      h("div", { class: g.ok ? "ok" : "error", "data-set": g.set }, `${g.ok ? "ok" : "FAIL"} ${g.reason}`))) },
    { title: "why", key: "reason" }, { title: "created", render: (v) => (v.created_at || "").replace("T", " ").slice(0, 19) },
  ], data.versions, { "data-table": "model-versions" }) : empty("no versions"));
  replace("model-events", data.events.length ? table([
    { title: "when", render: (e) => (e.created_at || "").replace("T", " ").slice(0, 19) }, { title: "model", key: "name" },
    { title: "version", key: "version" }, { title: "action", render: (e) => h("span", { class: "badge" }, e.action) }, { title: "reason", key: "reason" },
  ], data.events.map((e) => ({ ...e, _attrs: { "data-action": e.action } })), { "data-table": "model-events" }) : empty("no lifecycle events yet"));
}

// ------------------------------------------------------------------ feedback, live

async function loadFeedback() {
  const data = await api("feedback", { pipeline: state.pipeline });
  barChart("chart-feedback", data.feedback.map((f) => ({ label: `${f.stage} · ${f.source}`, value: f.count })), { empty: "no feedback yet" });
  barChart("chart-review", data.review.map((r) => ({ label: `${r.stage} · ${r.status}`, value: r.count })), { empty: "the review queue is empty" });
}

async function loadLive() {
  const data = await api("live");
  const blocks = data.sources.map((src) => {
    const box = h("div", { class: "card", "data-source": src.source }, h("h3", {}, src.source));
    if (src.error) { box.append(h("p", { class: "error" }, "unreachable: " + src.error)); return box; }
    if (!src.stages.length) { box.append(empty("no pipeline has run in this process")); return box; }
    box.append(table([
      { title: "pipeline", key: "pipeline" }, { title: "stage", key: "stage" }, { title: "in", key: "docs_in", num: true },
      { title: "out", key: "docs_out", num: true }, { title: "failed", key: "failed", num: true },
      { title: "p50 ms", key: "latency_p50_ms", num: true }, { title: "p95 ms", key: "latency_p95_ms", num: true },
      { title: "tokens/s", render: (r) => fmt(r.tokens_per_s ? Math.round(r.tokens_per_s) : r.tokens_per_s), num: true },
      { title: "padding", render: (r) => pct(r.padding_waste), num: true }, { title: "model", key: "model_version" },
    ], src.stages));
    const bars = h("div", { "data-bars": "live-out" });
    box.append(bars);
    if (src.lag.length) box.append(h("h3", {}, "consumer lag"), table([{ title: "topic", key: "topic" }, { title: "partition", key: "partition" }, { title: "lag", key: "lag", num: true }], src.lag));
    if (src.gpu.length) box.append(h("h3", {}, "GPU memory"), table([{ title: "device", key: "device" }, { title: "what", key: "what" }, { title: "", render: (g) => bytes(g.bytes), num: true }], src.gpu));
    return box;
  });
  replace("live", ...blocks);
  data.sources.forEach((src, i) => {
    const bars = blocks[i].querySelector("[data-bars=live-out]");
    if (bars) barChart(bars, src.stages.map((r) => ({ label: `${r.pipeline}/${r.stage} out`, value: r.docs_out || 0 })), { chartId: "live-out" });
  });
}

// ------------------------------------------------------------------ tabs and wiring

const LOADERS = { overview: loadOverview, samples: loadSamples, "dead-letters": loadDeadLetters, models: loadModels, feedback: loadFeedback, live: loadLive };

async function show(tab) {
  state.tab = LOADERS[tab] ? tab : "overview";
  for (const el of document.querySelectorAll(".tab")) el.classList.toggle("active", el.id === "tab-" + state.tab);
  for (const el of document.querySelectorAll("nav a")) el.classList.toggle("active", el.dataset.tab === state.tab);
  clearInterval(state.liveTimer);
  if (state.tab === "live") state.liveTimer = setInterval(() => loadLive().catch(report), 5000);
  await refresh();
}

function report(error) { $("status").textContent = "error: " + error.message; document.body.dataset.loaded = "error"; }

async function refresh() {
  if (!state.pipeline && state.tab !== "models" && state.tab !== "live") {
    document.body.dataset.loaded = state.tab;
    return;
  }
  document.body.dataset.loaded = "";
  $("status").textContent = "loading…";
  try {
    await LOADERS[state.tab]();
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = state.tab;
  } catch (error) { report(error); }
}

async function start() {
  const data = await api("pipelines");
  state.pipeline = data.default;
  $("pipeline").replaceChildren(...data.pipelines.map((name) => h("option", { value: name, selected: name === state.pipeline }, name)));
  if (!data.pipelines.length) $("status").textContent = "no pipeline has run against this database yet";
  $("pipeline").addEventListener("change", (e) => { state.pipeline = e.target.value; state.samples = { stack: [], before: null }; state.dl = { stack: [], before: null }; refresh(); });
  $("window").addEventListener("change", (e) => { state.window = e.target.value; refresh(); });
  $("refresh").addEventListener("click", refresh);
  $("sample-stage").addEventListener("change", () => { state.samples = { stack: [], before: null }; loadSamples().catch(report); });
  $("samples-older").addEventListener("click", () => { if (state.samples.next) { state.samples.stack.push(state.samples.before); state.samples.before = state.samples.next; loadSamples().catch(report); } });
  $("samples-newer").addEventListener("click", () => { if (state.samples.stack.length) { state.samples.before = state.samples.stack.pop(); loadSamples().catch(report); } });
  for (const id of ["dl-reason", "dl-status"]) $(id).addEventListener("change", () => { state.dl = { stack: [], before: null }; loadDeadLetters().catch(report); });
  $("dl-older").addEventListener("click", () => { if (state.dl.next) { state.dl.stack.push(state.dl.before); state.dl.before = state.dl.next; loadDeadLetters().catch(report); } });
  $("dl-newer").addEventListener("click", () => { if (state.dl.stack.length) { state.dl.before = state.dl.stack.pop(); loadDeadLetters().catch(report); } });
  $("dl-requeue-selected").addEventListener("click", () => {
    const ids = [...document.querySelectorAll(".dl-pick:checked")].map((el) => Number(el.value));
    if (ids.length) requeue({ ids }).catch(report); else $("dl-message").textContent = "tick the letters to requeue first";
  });
  $("dl-requeue-reason").addEventListener("click", () => {
    const reason = $("dl-reason").value;
    if (reason) requeue({ reason }).catch(report); else $("dl-message").textContent = "pick a reason first";
  });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  setInterval(() => { if (state.tab === "overview") refresh(); }, 60000);
  await show(location.hash.slice(1) || "overview");
}

start().catch(report);
