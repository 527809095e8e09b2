// The Plexus web view: the mesh, the services and a live flow table, from the apiserver's API
// (reached through `plexus ui`). No framework, no build step. Every value from the server is
// put in the page as text (textContent), never as markup.
'use strict';

// ---- small DOM helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'title') e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function unavailable(what, err) {
  return el('div', { class: 'unavailable' }, `${what} unavailable: ${err}`);
}

// GET a JSON endpoint; errors carry the server's message (the API's error body).
async function getJson(path) {
  const resp = await fetch(path, { headers: { Accept: 'application/json' } });
  const text = await resp.text();
  if (!resp.ok) {
    let message = text;
    try { message = JSON.parse(text).message || text; } catch (_) { /* plain text */ }
    throw new Error(`${resp.status} ${message}`.trim());
  }
  return JSON.parse(text);
}

// ---- the mesh ----

function stateBadge(remote) {
  if (remote.ready) return el('span', { class: 'badge ok' }, 'ready');
  if (remote.connected) return el('span', { class: 'badge warn' }, 'connected');
  return el('span', { class: 'badge bad' }, 'not connected');
}

function nodeList(nodes) {
  if (!nodes.length) return el('div', { class: 'muted' }, 'no nodes known');
  const ul = el('ul', { class: 'nodes' });
  for (const n of nodes) {
    ul.append(el('li', { class: 'node', 'data-node': `${n.cluster}/${n.name}` },
      el('span', { class: 'mono' }, n.name), ' ',
      el('span', { class: 'muted mono' }, [n.ip, n['pod-cidr']].filter(Boolean).join(' · ')),
      n.local ? el('span', { class: 'badge local' }, ' answering ') : null));
  }
  return ul;
}

function renderMesh(view) {
  const body = document.getElementById('mesh-body');
  body.className = '';
  body.replaceChildren();
  document.getElementById('cluster-name').textContent = `cluster ${view.cluster}`;
  const byCluster = (name) => (view.nodes || []).filter((n) => n.cluster === name);
  const clusters = el('div', { class: 'clusters' });
  const local = byCluster(view.cluster);
  clusters.append(el('div', { class: 'cluster', 'data-cluster': view.cluster },
    el('h3', {}, view.cluster, ' ', el('span', { class: 'badge local' }, 'this cluster')),
    el('div', { class: 'muted' }, `${local.length} nodes · asked ${view.agent}`),
    nodeList(local)));
  const mesh = view.clustermesh || {};
  for (const r of mesh['remote-clusters'] || []) {
    const counts = `${r['num-nodes']} nodes · ${r['num-endpoints']} endpoints · ` +
      `${r['num-identities']} identities · ${r['num-shared-services']} shared services` +
      (r['num-failures'] ? ` · ${r['num-failures']} failures` : '');
    clusters.append(el('div', { class: 'cluster', 'data-cluster': r.name },
      el('h3', {}, r.name, ' ', stateBadge(r)),
      r.status && r.status !== 'ready' ? el('div', { class: 'muted' }, r.status) : null,
      el('div', { class: 'muted' }, counts),
      r['last-failure'] ? el('div', { class: 'unavailable' }, `last failure: ${r['last-failure']}`) : null,
      nodeList(byCluster(r.name))));
  }
  body.append(clusters);
  for (const e of mesh['config-errors'] || []) body.append(el('div', { class: 'unavailable' }, e));
  if ((view.unreachable || []).length) {
    body.append(el('div', { class: 'muted' }, `agents that did not answer: ${view.unreachable.join('; ')}`));
  }
}

// Each part says on <body> when it has settled (data-mesh, data-services, data-relay,
// data-flows: loaded/unavailable, flows: streaming/done/unavailable), for scripts and tests
// that drive the page.
function settled(part, state) {
  document.body.dataset[part] = state;
}

async function loadMesh() {
  try {
    renderMesh(await getJson('/ui/api/mesh'));
    settled('mesh', 'loaded');
  } catch (e) {
    const body = document.getElementById('mesh-body');
    body.className = '';
    body.replaceChildren(unavailable('The mesh is', e.message));
    settled('mesh', 'unavailable');
  }
  await loadRelayNodes();
}

// The relay's node list: which nodes it reaches. Its shape is read leniently (a list of
// {name, reachable, error}, bare or under "nodes").
async function loadRelayNodes() {
  const out = document.getElementById('relay-nodes');
  try {
    const j = await getJson('/v1/relay/nodes');
    const list = Array.isArray(j) ? j : (j.nodes || []);
    const name = (n) => n.name || n.node || n.node_name || '';
    const down = list.filter((n) => n.reachable === false);
    out.textContent = `relay reaches ${list.length - down.length}/${list.length} nodes`;
    for (const n of down) {
      const li = document.querySelector(`li.node[data-node="${CSS.escape(name(n))}"]`);
      if (li) li.append(' ', el('span', { class: 'badge bad', title: n.error || '' }, 'unreachable'));
    }
    settled('relay', 'loaded');
  } catch (e) {
    out.textContent = `relay node list unavailable (${e.message})`;
    settled('relay', 'unavailable');
  }
}

// ---- the services ----

function renderServices(view) {
  const body = document.getElementById('services-body');
  body.className = '';
  body.replaceChildren();
  const services = view.services || [];
  if (!services.length) {
    body.append(el('div', { class: 'muted' }, 'no services'));
    return;
  }
  const tbody = el('tbody');
  for (const s of services) {
    const mode = [s.global ? 'global' : 'local', s.global && !s.shared ? 'not shared' : null,
      s.affinity && s.affinity !== 'none' ? `affinity ${s.affinity}` : null].filter(Boolean).join(', ');
    const ports = Object.entries(s.ports || {}).map(([n, p]) => (n ? `${n} ${p}` : p)).join(', ');
    const byCluster = new Map();
    for (const b of (s.backends || {}).candidates || []) {
      if (!byCluster.has(b.cluster)) byCluster.set(b.cluster, []);
      byCluster.get(b.cluster).push(b);
    }
    const backends = el('td', { class: 'backends' });
    if (!byCluster.size) backends.append(el('span', { class: 'muted' }, 'no backends'));
    for (const [cluster, list] of byCluster) {
      const line = el('div', { 'data-cluster': cluster }, el('strong', {}, cluster), ': ');
      for (const b of list) line.append(el('span', { class: `backend ${b.state}` }, `${b.ip} (${b.state})`));
      backends.append(line);
    }
    tbody.append(el('tr', { class: 'service', 'data-service': `${s.namespace}/${s.name}` },
      el('td', { class: 'mono' }, `${s.namespace}/${s.name}`),
      el('td', { class: 'mono' }, s['cluster-ip'] || '-'),
      el('td', { class: 'mono' }, ports),
      el('td', {}, mode, s.error ? el('div', { class: 'unavailable' }, s.error) : null),
      backends));
  }
  body.append(el('table', {},
    el('thead', {}, el('tr', {}, ...['Service', 'Address', 'Ports', 'Mode', 'Backends by cluster'].map((h) => el('th', {}, h)))),
    tbody));
  body.append(el('div', { class: 'muted' }, `as the agent of ${view.agent} balances them`));
}

async function loadServices() {
  try {
    renderServices(await getJson('/ui/api/services'));
    settled('services', 'loaded');
  } catch (e) {
    const body = document.getElementById('services-body');
    body.className = '';
    body.replaceChildren(unavailable('The services are', e.message));
    settled('services', 'unavailable');
  }
}

// ---- flows ----

const RESERVED = ['unknown', 'host', 'world', 'unmanaged', 'health', 'init', 'remote-node',
  'kube-apiserver', 'ingress', 'world-ipv4', 'world-ipv6'];
const MAX_ROWS = 1000;

function identity(id) {
  if (id === undefined) id = 0;
  return id < RESERVED.length ? `(${RESERVED[id]})` : `(ID:${id})`;
}

function ports(flow) {
  const l4 = flow.l4 || {};
  const p = l4.TCP || l4.UDP || l4.SCTP;
  return p ? [p.source_port, p.destination_port] : [undefined, undefined];
}

function side(flow, which) {
  const ep = flow[which] || {};
  const ip = (flow.IP || {})[which];
  const svc = flow[`${which}_service`];
  const port = ports(flow)[which === 'source' ? 0 : 1];
  let host = ip || '';
  if (ep.pod_name) host = ep.namespace ? `${ep.namespace}/${ep.pod_name}` : ep.pod_name;
  else if (svc && svc.name) host = svc.namespace ? `${svc.namespace}/${svc.name}` : svc.name;
  const hostPort = port ? `${host}:${port}` : host;
  return `${hostPort} ${identity(ep.identity)}${ep.cluster_name ? ` [${ep.cluster_name}]` : ''}`;
}

function flowType(flow) {
  const ev = flow.event_type || {};
  switch (ev.type) {
    case 1: return flow.drop_reason_text || flow.drop_reason_desc || 'drop';
    case 4: return (flow.trace_observation_point || 'TO_ENDPOINT').toLowerCase().replace(/_/g, '-');
    case 5: return `policy-verdict ${flow.traffic_direction || ''}`.trim();
    case 7: return 'translation';
    default: return 'unknown';
  }
}

function summary(flow) {
  const parts = [flow.Summary || ''];
  const denied = [...(flow.ingress_denied_by || []), ...(flow.egress_denied_by || [])];
  if (denied.length) parts.push(`denied by ${denied.map((p) => (p.namespace ? `${p.namespace}/${p.name}` : p.name)).join(', ')}`);
  else if (flow.policy_deny) parts.push(`(${flow.policy_deny})`);
  const t = flow.translation;
  if (t && !(flow.Summary || '').includes(t.backend || '\u0000')) {
    parts.push(`${t.frontend} → ${t.backend}${t.backend_cluster ? ` (cluster ${t.backend_cluster})` : ''}`);
  }
  return parts.filter(Boolean).join(' ');
}

function shortTime(t) {
  const m = /T(\d\d:\d\d:\d\d)(\.\d{1,3})?/.exec(t || '');
  return m ? m[1] + (m[2] || '') : (t || '');
}

// The relay's node_status lines, tallied as `plexus observe` does: N/M nodes.
const tally = { connected: new Set(), unavailable: new Map() };

function updateTally(status) {
  for (const n of status.node_names || []) {
    switch (status.state_change) {
      case 'NODE_CONNECTED': tally.unavailable.delete(n); tally.connected.add(n); break;
      case 'NODE_UNAVAILABLE':
      case 'NODE_ERROR': tally.connected.delete(n); tally.unavailable.set(n, status.message || ''); break;
      case 'NODE_GONE': tally.connected.delete(n); tally.unavailable.delete(n); break;
      default: break;
    }
  }
  const total = tally.connected.size + tally.unavailable.size;
  let text = `${tally.connected.size}/${total} nodes`;
  if (tally.unavailable.size) {
    text += ` (unavailable: ${[...tally.unavailable].map(([n, m]) => (m ? `${n}: ${m}` : n)).join('; ')})`;
  }
  setFlowStatus(text, tally.unavailable.size > 0);
}

function setFlowStatus(text, bad) {
  const s = document.getElementById('flows-status');
  s.className = bad ? 'unavailable' : 'muted';
  s.textContent = text;
}

function addRow(row) {
  const rows = document.getElementById('flow-rows');
  rows.prepend(row);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
}

function handleLine(resp) {
  if (resp.flow) {
    const f = resp.flow;
    const verdict = f.verdict || '';
    const cls = `flow ${verdict.toLowerCase()}`;
    addRow(el('tr', { class: cls, 'data-verdict': verdict, title: JSON.stringify(f) },
      el('td', { class: 'mono' }, shortTime(f.time)),
      el('td', { class: 'mono' }, f.node_name || resp.node_name || ''),
      el('td', { class: 'mono' }, side(f, 'source')),
      el('td', { class: 'mono' }, side(f, 'destination')),
      el('td', {}, flowType(f)),
      el('td', { class: 'verdict' }, verdict === 'DROPPED' ? '✖ ' : '', verdict),
      el('td', {}, summary(f))));
  } else if (resp.lost_events) {
    const l = resp.lost_events;
    addRow(el('tr', { class: 'lost' }, el('td', { class: 'mono' }, shortTime(resp.time)),
      el('td', { class: 'mono' }, resp.node_name || ''),
      el('td', { colspan: '5' }, `EVENTS LOST: ${l.source || 'unknown'} ${l.num_events_lost || 0}`)));
  } else if (resp.node_status) {
    updateTally(resp.node_status);
  }
}

// The form's filters as observe flags, in form order; "More flags" is split like a shell line.
function formFlags(form) {
  const flags = [];
  for (const e of form.elements) {
    if (!e.name || ['more', 'follow', 'last'].includes(e.name)) continue;
    if (e.value.trim()) flags.push([e.name, e.value.trim()]);
  }
  const last = form.elements.last.value.trim();
  if (last) flags.push(['last', last]);
  if (form.elements.follow.checked) flags.push(['follow', '']);
  const words = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(form.elements.more.value)) !== null) words.push(m[1] ?? m[2] ?? m[3]);
  const switches = ['not', 'all', 'follow', 'f'];
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (!w.startsWith('-')) throw new Error(`more flags: ${w}: expected a flag (--name)`);
    const eq = w.indexOf('=');
    if (eq > 0) { flags.push([w.slice(0, eq).replace(/^-+/, ''), w.slice(eq + 1)]); continue; }
    const name = w.replace(/^-+/, '');
    if (switches.includes(name)) { flags.push([name, '']); continue; }
    if (i + 1 >= words.length) throw new Error(`more flags: ${w} needs a value`);
    flags.push([name, words[++i]]);
  }
  return flags;
}

let current = null;

async function startFlows() {
  if (current) current.abort();
  const controller = new AbortController();
  current = controller;
  document.getElementById('flow-rows').replaceChildren();
  tally.connected.clear();
  tally.unavailable.clear();
  settled('flows', 'starting');
  try {
    const flags = formFlags(document.getElementById('filters'));
    const request = await getJson(`/ui/api/request?flags=${encodeURIComponent(JSON.stringify(flags))}`);
    setFlowStatus('waiting for flows…', false);
    const resp = await fetch(`/v1/flows?request=${encodeURIComponent(JSON.stringify(request))}`,
      { signal: controller.signal, headers: { Accept: 'application/x-ndjson' } });
    if (!resp.ok) {
      const text = await resp.text();
      let message = text;
      try { message = JSON.parse(text).message || text; } catch (_) { /* plain text */ }
      throw new Error(`${resp.status} ${message}`.trim());
    }
    if (tally.connected.size + tally.unavailable.size === 0) setFlowStatus('streaming', false);
    settled('flows', 'streaming');
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim()) handleLine(JSON.parse(line));
      }
    }
    if (buf.trim()) handleLine(JSON.parse(buf));
    if (current === controller && tally.connected.size + tally.unavailable.size === 0) {
      setFlowStatus('end of flows', false);
    }
    if (current === controller) settled('flows', 'done');
  } catch (e) {
    if (e.name === 'AbortError') return;
    setFlowStatus(`Flows unavailable: ${e.message}`, true);
    settled('flows', 'unavailable');
  }
}

// Filters may come in the page's address, by field name: /ui?verdict=DROPPED&follow=0.
function prefill() {
  const form = document.getElementById('filters');
  for (const [k, v] of new URLSearchParams(window.location.search)) {
    const e = form.elements.namedItem(k);
    if (!e || !e.name) continue;
    if (e.type === 'checkbox') e.checked = !['0', 'false', 'no', 'off'].includes(v.toLowerCase());
    else e.value = v;
  }
}

document.getElementById('filters').addEventListener('submit', (ev) => {
  ev.preventDefault();
  startFlows();
});

prefill();
loadMesh();
loadServices();
startFlows();
