// The Trellis dashboard page: asks the server for one namespace's view (/api/view, computed there by the viewer's
// own queries) every few seconds and draws it: the workloads' rows with sparklines (uPlot), the edges at the
// positions the server laid out (dagre), and the routes with their split over time against the weights (uPlot).
// Every text comes from the server already printed as the CLI prints it; nothing here computes a number. The live
// tap panel streams one workload's requests from the server's /api/tap (server-sent events), on demand, and closes
// the stream when it is stopped (the server then closes the agents' taps).
/* global uPlot */
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#1570ef', '#12805c', '#b54708', '#c01048', '#6938ef', '#0e9384', '#667085'];
const charts = [];
const TAP_ROWS = 100;
let timer;
/** The open live view: { source: EventSource, workload, dropped }. */
let tap;
let current = new URLSearchParams(location.search).get('namespace') || '';

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

async function refresh() {
  clearTimeout(timer);
  let refreshMs = 5000;
  const status = document.getElementById('status');
  try {
    const res = await fetch(`/api/view${current ? `?namespace=${encodeURIComponent(current)}` : ''}`, { cache: 'no-store' });
    const body = await res.json();
    refreshMs = body.refreshMs || refreshMs;
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    render(body);
    showProblem(body.message);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = '';
  } catch (err) {
    // Keep what is shown; say why it is not fresh.
    showProblem(err.message);
    status.textContent = 'not updated';
    status.className = 'stale';
  }
  timer = setTimeout(refresh, refreshMs);
}

function showProblem(text) {
  const p = document.getElementById('problem');
  p.hidden = !text;
  p.textContent = text || '';
}

function render(view) {
  current = view.namespace;
  const url = new URL(location.href);
  url.searchParams.set('namespace', current);
  history.replaceState(null, '', url);
  document.body.dataset.namespace = view.namespace;
  document.body.dataset.at = view.provenance.at;
  const select = document.getElementById('namespace');
  // Rebuilt only when the list changes: an open list would close under the user's pointer.
  if (select.dataset.list !== view.namespaces.join(',')) {
    select.dataset.list = view.namespaces.join(',');
    select.replaceChildren(...view.namespaces.map((n) => el('option', { value: n }, n)));
  }
  select.value = current;
  const p = view.provenance;
  document.getElementById('provenance').textContent =
    `Prometheus ${p.prometheus} · window ${p.window} · ${p.recordingRules ? 'recording rules' : 'raw counters'} · at ${new Date(p.at).toLocaleTimeString()}`;
  for (const c of charts.splice(0)) c.destroy();
  renderWorkloads(view);
  renderGraph(view.graph);
  renderRoutes(view);
  renderTapChoices(view);
}

function renderWorkloads(view) {
  const body = document.querySelector('#workloads tbody');
  const empty = document.getElementById('workloads-empty');
  empty.hidden = view.workloads.length > 0;
  empty.textContent = view.workloads.length ? '' : `No workload of ${view.namespace} was called in the last ${view.provenance.window}.`;
  const rows = view.workloads.map((w) => {
    const d = w.display;
    const cell = (col, text, cls = '') => el('td', { 'data-col': col, ...(cls && { class: cls }) }, text);
    const rps = el('td', { class: 'spark', 'data-col': 'rps-spark' });
    const success = el('td', { class: 'spark', 'data-col': 'success-spark' });
    const tr = el(
      'tr',
      { 'data-workload': w.name, 'data-namespace': w.namespace },
      cell('name', w.name, 'text'),
      cell('meshed', w.meshed ? 'yes' : 'no', 'text'),
      cell('success', d.success, w.successRate !== null && w.successRate < 0.95 ? 'low' : ''),
      cell('rps', d.rps),
      cell('p50', d.p50),
      cell('p95', d.p95),
      cell('p99', d.p99),
      cell('tcp', d.tcpConn),
      cell('secured', d.secured),
      rps,
      success,
    );
    return { tr, w, rps, success };
  });
  body.replaceChildren(...rows.map((r) => r.tr));
  for (const r of rows) {
    charts.push(sparkline(r.rps, view.history.times, r.w.spark.rps, COLORS[0], null));
    charts.push(sparkline(r.success, view.history.times, r.w.spark.success.map((v) => (v === null ? null : v * 100)), COLORS[1], [0, 100]));
  }
}

function sparkline(target, times, values, color, range) {
  return new uPlot(
    {
      width: 150,
      height: 32,
      pxAlign: false,
      cursor: { show: false },
      legend: { show: false },
      select: { show: false },
      scales: { x: { time: false }, y: range ? { range: () => range } : { range: (_u, _min, max) => [0, Math.max(max || 0, 1e-9) * 1.1] } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: color, width: 1.5, fill: `${color}22`, spanGaps: false, points: { show: true, size: 4, fill: color, filter: isolated } }],
    },
    [times, values],
    target,
  );
}

/** Points with no neighbour to draw a line to (a series that has just begun): drawn as dots, or they would not show. */
function isolated(u, seriesIdx) {
  const d = u.data[seriesIdx];
  const out = [];
  for (let i = 0; i < d.length; i++) if (d[i] != null && d[i - 1] == null && d[i + 1] == null) out.push(i);
  return out;
}

function edgeClass(e) {
  if (e.mtls) return 'mtls';
  return e.mtlsShare ? 'partly' : 'plain';
}

function renderGraph(graph) {
  const box = document.getElementById('graph');
  if (!graph.nodes.length) {
    box.replaceChildren(el('p', { class: 'note' }, 'No edge in the window.'));
    return;
  }
  const root = svg('svg', { width: graph.width, height: graph.height, viewBox: `0 0 ${graph.width} ${graph.height}`, role: 'img', 'aria-label': 'edges between workloads' });
  const defs = svg('defs');
  for (const k of ['mtls', 'partly', 'plain']) {
    const marker = svg('marker', { id: `arrow-${k}`, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: k === 'mtls' ? '#12805c' : k === 'partly' ? '#b54708' : '#c01048' }));
    defs.append(marker);
  }
  root.append(defs);
  // Labels go on a layer above every path, each on a background of its own (sized once drawn).
  const labels = [];
  for (const e of graph.edges) {
    const k = edgeClass(e);
    const g = svg('g', { class: `edge ${k}`, 'data-edge': e.id, 'data-mtls': String(e.mtls), 'data-source': e.source, 'data-destination': e.destination });
    const d = e.points.map((p, i) => `${i ? 'L' : 'M'}${p.x},${p.y}`).join(' ');
    g.append(svg('path', { d, 'marker-end': `url(#arrow-${k})` }));
    const title = svg('title');
    title.textContent = `${e.source} -> ${e.destination}: ${e.label}`;
    g.append(title);
    root.append(g);
    const label = svg('text', { x: e.labelAt.x, y: e.labelAt.y, 'data-label-of': e.id });
    label.textContent = e.label;
    labels.push(label);
  }
  const labelLayer = svg('g', { class: 'edge-labels' });
  labelLayer.append(...labels);
  for (const n of graph.nodes) {
    const g = svg('g', { class: `node${n.local ? '' : ' remote'}${n.meshed ? '' : ' outside'}`, 'data-node': n.id, 'data-meshed': String(n.meshed) });
    g.append(svg('rect', { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height, rx: 5 }));
    const t = svg('text', { x: n.x, y: n.y });
    t.textContent = n.label;
    g.append(t);
    const title = svg('title');
    title.textContent = `${n.id}${n.meshed ? '' : ' (outside the mesh)'}`;
    g.append(title);
    root.append(g);
  }
  root.append(labelLayer);
  box.replaceChildren(root);
  for (const label of labels) {
    const b = label.getBBox();
    label.before(svg('rect', { x: b.x - 3, y: b.y - 1, width: b.width + 6, height: b.height + 2, rx: 3, class: 'label-bg' }));
  }
}

function renderRoutes(view) {
  const note = document.getElementById('routes-note');
  note.hidden = !view.routes.note;
  note.textContent = view.routes.note || '';
  const box = document.getElementById('routes');
  const blocks = [];
  const pending = [];
  for (const s of view.routes.services) {
    const head = el('tr', {}, ...['ROUTE', 'RULE', 'BACKEND'].map((h) => el('th', { class: 'text' }, h)), ...['WEIGHT', 'SPLIT', 'SUCCESS', 'RPS', 'LATENCY_P50', 'LATENCY_P99'].map((h) => el('th', {}, h)));
    const rows = s.rows.map((r) => {
      const d = r.display;
      const cell = (col, text, cls = '') => el('td', { 'data-col': col, ...(cls && { class: cls }) }, text);
      return el(
        'tr',
        { 'data-route-row': `${r.route}|${r.rule}|${r.backend}` },
        cell('route', r.route, 'text'),
        cell('rule', r.rule, 'text'),
        cell('backend', r.backend, 'text'),
        cell('weight', d.weight),
        cell('split', d.split),
        cell('success', d.success),
        cell('rps', d.rps),
        cell('p50', d.p50),
        cell('p99', d.p99),
      );
    });
    const chart = el('div', { class: 'split-chart' });
    blocks.push(el('div', { class: 'service', 'data-service': s.service }, el('h3', {}, `svc/${s.service}`), el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows)), chart));
    if (s.split.length) pending.push({ chart, s });
  }
  box.replaceChildren(...blocks);
  for (const { chart, s } of pending) charts.push(splitChart(chart, view.history.times, s.split));
}

/** The share of each backend over time (solid) against its weight (dashed), in percent. */
function splitChart(target, times, split) {
  const series = [{}];
  const data = [times];
  split.forEach((b, i) => {
    const color = COLORS[i % COLORS.length];
    series.push({ label: `${b.label} split`, stroke: color, width: 2, points: { show: true, size: 5, fill: color, filter: isolated }, value: (_u, v) => (v === null ? '-' : `${v.toFixed(1)}%`) });
    data.push(b.values.map((v) => (v === null ? null : v * 100)));
    series.push({ label: `weight ${(b.weight * 100).toFixed(0)}%`, stroke: color, width: 1, dash: [5, 4], points: { show: false }, value: (_u, v) => (v === null ? '-' : `${v.toFixed(0)}%`) });
    data.push(times.map(() => b.weight * 100));
  });
  return new uPlot(
    {
      width: Math.min(760, Math.max(420, document.body.clientWidth - 60)),
      height: 180,
      scales: { y: { range: [0, 100] } },
      axes: [{}, { label: '% of the rule', size: 50 }],
      series,
    },
    data,
    target,
  );
}

/** The workloads of the namespace a live view can watch: those called, and those that call (the graph's own boxes). */
function renderTapChoices(view) {
  const names = new Set(view.workloads.map((w) => w.name));
  for (const n of view.graph.nodes) if (n.local) names.add(n.id.slice(n.id.indexOf('/') + 1));
  const list = [...names].sort();
  const select = document.getElementById('tap-workload');
  if (select.dataset.list === `${view.namespace}:${list.join(',')}`) return;
  const chosen = select.value;
  select.dataset.list = `${view.namespace}:${list.join(',')}`;
  select.replaceChildren(...list.map((n) => el('option', { value: n }, n)));
  if (list.includes(chosen)) select.value = chosen;
}

function tapStatus(text, problem = false) {
  const s = document.getElementById('tap-status');
  s.textContent = text;
  s.className = problem ? 'problem' : '';
}

function startTap() {
  const workload = document.getElementById('tap-workload').value;
  if (!workload) return tapStatus('no workload to watch in this namespace', true);
  stopTap();
  const table = document.getElementById('tap-rows');
  table.querySelector('tbody').replaceChildren();
  table.hidden = false;
  const source = new EventSource(`/api/tap?namespace=${encodeURIComponent(current)}&workload=${encodeURIComponent(workload)}`);
  tap = { source, workload: `${current}/${workload}`, dropped: 0, notes: [] };
  const button = document.getElementById('tap-toggle');
  button.textContent = 'Stop';
  button.dataset.state = 'on';
  tapStatus(`connecting to tap ${tap.workload}...`);
  const mine = () => tap && tap.source === source;
  const data = (e) => JSON.parse(e.data);
  source.addEventListener('tapping', (e) => {
    const d = data(e);
    tap.heading = `tapping ${tap.workload} on ${d.agents.join(', ')}, at most ${d.maxRps}/s per agent, for ${d.durationMs / 1000} s`;
    tapStatus(tap.heading);
  });
  source.addEventListener('row', (e) => addTapRow(data(e)));
  source.addEventListener('drop', (e) => {
    tap.dropped = data(e).dropped;
    tapStatus(`${tap.heading}; ${tap.dropped} dropped past the bound`);
  });
  source.addEventListener('note', (e) => {
    tap.notes.push(data(e).note);
    tapStatus(`${tap.heading || ''}; ${tap.notes.join('; ')}`);
  });
  source.addEventListener('problem', (e) => stopTap(data(e).problem, true));
  source.addEventListener('end', (e) => {
    const d = data(e);
    const failed = d.failed.map((f) => `${f.node}: ${f.error}`).join('; ');
    stopTap(`ended: ${d.reason} (${d.observations} seen, ${d.dropped} dropped)${failed ? `; ${failed}` : ''}`, d.accepted.length === 0);
  });
  // The dashboard went away, or the connection broke: say so rather than let EventSource reconnect by itself.
  source.onerror = () => {
    if (mine()) stopTap('the connection to the dashboard closed', true);
  };
}

/** Closes the live view (the server closes the agents' taps when the stream goes). */
function stopTap(text = 'stopped', problem = false) {
  if (!tap) return;
  tap.source.close();
  tap = undefined;
  const button = document.getElementById('tap-toggle');
  button.textContent = 'Watch live';
  button.dataset.state = 'off';
  tapStatus(text, problem);
}

function latencyText(ms) {
  if (ms === null || ms === undefined) return '-';
  return ms >= 100 ? `${ms.toFixed(0)}ms` : ms >= 1 ? `${ms.toFixed(2)}ms` : `${Math.round(ms * 1000)}µs`;
}

function addTapRow(r) {
  const body = document.querySelector('#tap-rows tbody');
  const cell = (col, text, cls = '') => el('td', { 'data-col': col, ...(cls && { class: cls }) }, text);
  const t = new Date(r.time);
  const time = `${t.toLocaleTimeString([], { hour12: false })}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const status = r.kind === 'tcp' ? (r.error ? 'error' : '-') : String(r.status || '-');
  const bad = r.status >= 500 || r.denied || (r.kind === 'http' && !r.status);
  const title = [r.denied ? `denied by ${r.denied}` : '', r.error, r.route ? `route ${r.route}` : '', r.tls ? 'mTLS' : 'plaintext', r.authority].filter(Boolean).join(' · ');
  const headers = r.headers.length
    ? el('details', {}, el('summary', {}, `${r.headers.length}`), ...r.headers.map((h) => el('code', {}, `${h.name}: ${h.value}`)))
    : '-';
  const tr = el(
    'tr',
    { 'data-id': r.id, 'data-direction': r.direction, 'data-kind': r.kind, 'data-method': r.method, 'data-path': r.path, 'data-status': String(r.status), 'data-source': r.source, 'data-destination': r.destination, title },
    cell('time', time, 'text'),
    cell('proxy', r.direction, 'text'),
    cell('source', r.source, 'text'),
    cell('destination', r.destination, 'text'),
    cell('method', r.method, 'text'),
    cell('path', r.path, 'text'),
    cell('status', status, bad ? 'low' : ''),
    cell('latency', latencyText(r.latencyMs)),
    cell('duration', latencyText(r.durationMs)),
    el('td', { class: 'text', 'data-col': 'headers' }, headers),
  );
  body.prepend(tr);
  while (body.children.length > TAP_ROWS) body.lastElementChild.remove();
}

document.getElementById('tap-toggle').addEventListener('click', () => (tap ? stopTap() : startTap()));
document.getElementById('namespace').addEventListener('change', (e) => {
  current = e.target.value;
  stopTap('stopped: another namespace');
  refresh();
});
refresh();
