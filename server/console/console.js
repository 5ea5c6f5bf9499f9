// The Muster console: a page over the admin API, signed in with a session cookie. Every value
// that came from a host, a token or the audit log goes into the page as text (textContent,
// never HTML); changes carry the session's CSRF token.
'use strict';

const $ = (id) => document.getElementById(id);
const ROLES = ['allocator', 'coordinator', 'proxy', 'director'];
const KINDS = ['created', 'used', 'committed', 'refused', 'revoked', 'expired', 'returned',
  'replaced', 'roles_set', 'host_removed', 'host_left', 'recovery', 'api_key_created',
  'api_key_revoked', 'password_changed'];
// What a refusal's code means (docs/troubleshooting.md has what to do).
const MEANING = {
  'token.malformed': 'not a roles token',
  'token.algorithm_not_allowed': 'signed with an algorithm Muster does not take',
  'token.bad_signature': 'not signed by this platform',
  'token.wrong_issuer': 'made by something other than Muster',
  'token.unknown': 'no such token on this platform',
  'token.revoked': 'the token was revoked',
  'token.expired': 'the token has expired',
  'token.not_yet_valid': 'the token is not valid yet (check the clocks)',
  'token.use_limit_reached': 'the token has been used as many times as it may',
  'token.rate_limited': 'too many refused tokens from this address',
  'token.source_not_allowed': 'the host is outside the token\'s allowed sources',
  'token.role_not_granted': 'the host asked for a role the token does not grant',
  'token.emergency_allocator': 'the emergency token cannot enroll allocators',
  'csr.invalid': 'the certificate request does not read or is not signed by its key',
  'csr.key_type': 'the certificate request\'s key is not one Muster signs',
  'csr.ca_requested': 'the certificate request asked to be a CA',
  'csr.san_not_allowed': 'the certificate request names an address or name it may not have',
  'host.replace_needs_roles': 'a host of that name exists; replacing it needs its roles',
  'join.unknown': 'the commit names no join this coordinator knows',
  'join.proof_invalid': 'the commit\'s proof of key possession does not verify',
  'auth.invalid': 'wrong user, password or API key',
  'auth.rate_limited': 'too many failed sign-ins from this address',
};
const PAGE = 50;
// Hosts shown at once: a fleet of 10,000 is paged, filtered and sorted in memory.
const HOST_PAGE = 100;

const state = {
  csrf: null, view: null, timer: null, busy: false,
  hosts: [], sort: { key: 'public_hostname', dir: 1 }, editing: null,
  tokens: [], events: [], lastSeq: 0, auditPage: 0, hostPage: 0, status: null,
  made: null,
};

// --- helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function say(text) {
  $('status').textContent = text || '';
}

function when(secs) {
  if (!secs) return '-';
  const d = new Date(secs * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function ago(secs) {
  if (!secs) return '-';
  const s = Math.max(0, Math.round(Date.now() / 1000 - secs));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json', 'X-Muster-Console': '1' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const e = data && data.errors && data.errors[0];
    const err = new ApiError(r.status, e ? e.code : '', e ? e.message : r.statusText);
    if (r.status === 401 && path !== '/console/session') signedOut('Your session ended: sign in again.');
    throw err;
  }
  return data;
}

function failed(e) {
  say(e.code ? `${e.message} (${e.code})` : String(e.message || e));
}

// --- session -------------------------------------------------------------------------------

function signedOut(why) {
  state.csrf = null;
  clearInterval(state.timer);
  state.timer = null;
  $('nav').hidden = true;
  $('who').hidden = true;
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('view-sign-in').hidden = false;
  say(why || '');
  $('password').value = '';
  $('api-key').value = '';
}

function signedIn(s) {
  state.csrf = s.csrf;
  $('actor').textContent = `Signed in as ${s.actor}`;
  $('nav').hidden = false;
  $('who').hidden = false;
  $('view-sign-in').hidden = true;
  say('');
  route();
  state.timer = setInterval(refresh, 3000);
}

async function signIn(ev) {
  ev.preventDefault();
  const withKey = document.querySelector('input[name="with"]:checked').value === 'key';
  const body = withKey ? { api_key: $('api-key').value }
    : { user: $('user').value, password: $('password').value };
  $('sign-in-error').textContent = '';
  try {
    const s = await api('POST', '/console/session', body);
    $('password').value = '';
    $('api-key').value = '';
    signedIn(s);
  } catch (e) {
    $('sign-in-error').textContent = e.code ? `${e.message} (${e.code})` : String(e.message);
  }
}

async function signOut() {
  try { await api('DELETE', '/console/session'); } catch (_) { /* signed out either way */ }
  signedOut('Signed out.');
}

// --- views ---------------------------------------------------------------------------------

function route() {
  if (!state.csrf) return;
  const view = (location.hash || '#hosts').slice(1);
  const known = ['hosts', 'tokens', 'audit', 'platform'].includes(view) ? view : 'hosts';
  state.view = known;
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${known}`;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === known) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  refresh();
}

async function refresh() {
  if (!state.csrf || state.busy) return;
  state.busy = true;
  try {
    if (state.view === 'hosts') await Promise.all([loadHosts(), loadEvents()]);
    else if (state.view === 'tokens') await loadTokens();
    else if (state.view === 'audit') await loadEvents();
    else if (state.view === 'platform') await loadPlatform();
  } catch (e) {
    failed(e);
  } finally {
    state.busy = false;
  }
}

// --- hosts ---------------------------------------------------------------------------------

async function loadHosts() {
  const r = await api('GET', '/api/v1/platform/infrastructure/runners');
  state.hosts = r.runners || [];
  if (state.editing === null) renderHosts();
  renderCounts();
}

function roleNames(h) {
  return (h.roles || []).map((r) => r.role_name);
}

function sortValue(h, key) {
  if (key === 'roles') return roleNames(h).join(',');
  const v = h[key];
  return v === undefined || v === null ? '' : v;
}

function renderHosts() {
  const tbody = $('hosts').querySelector('tbody');
  const q = $('host-filter').value.trim().toLowerCase();
  const { key, dir } = state.sort;
  const shown = state.hosts.filter((h) => !q || [h.public_hostname, h.runner_id, h.zone,
    h.agent_version || '', roleNames(h).join(' ')].some((s) => String(s).toLowerCase().includes(q)));
  shown.sort((a, b) => {
    const x = sortValue(a, key);
    const y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : 0) * dir;
  });
  const pages = Math.max(1, Math.ceil(shown.length / HOST_PAGE));
  state.hostPage = Math.max(0, Math.min(state.hostPage, pages - 1));
  const first = state.hostPage * HOST_PAGE;
  const frag = document.createDocumentFragment();
  for (const h of shown.slice(first, first + HOST_PAGE)) frag.append(hostRow(h));
  clear(tbody);
  tbody.append(frag);
  $('host-count').textContent = `${shown.length} of ${state.hosts.length} hosts`;
  $('hosts-page').textContent = shown.length
    ? `${first + 1}-${Math.min(first + HOST_PAGE, shown.length)} of ${shown.length}` : '';
  $('hosts-prev').disabled = state.hostPage === 0;
  $('hosts-next').disabled = state.hostPage >= pages - 1;
  for (const b of document.querySelectorAll('#hosts th button')) {
    if (b.dataset.sort === key) b.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    else b.removeAttribute('aria-sort');
  }
}

function hostRow(h) {
  const roles = roleNames(h);
  const pending = (h.pending_roles || []).length ? ` (asked: ${h.pending_roles.join(', ')})` : '';
  const actions = el('td', {},
    el('button', { type: 'button', class: 'plain', 'data-act': 'roles', 'data-id': h.runner_id,
      'aria-label': `Roles of ${h.public_hostname}` }, 'Roles'),
    ' ',
    el('button', { type: 'button', class: 'danger', 'data-act': 'remove', 'data-id': h.runner_id,
      'aria-label': `Remove ${h.public_hostname}` }, 'Remove'));
  return el('tr', { 'data-id': h.runner_id },
    el('td', {}, el('span', { text: h.public_hostname }), el('br'),
      el('span', { class: 'muted', text: h.runner_id })),
    el('td', { text: (roles.join(', ') || '-') + pending }),
    el('td', { text: h.zone || '-' }),
    el('td', { class: h.connected ? 'yes' : 'no', text: h.connected ? 'yes' : 'no' }),
    el('td', { text: ago(h.last_heartbeat), title: when(h.last_heartbeat) }),
    el('td', { text: h.agent_version || '-' }),
    el('td', { text: when(h.certificate_not_after) }),
    actions);
}

function editRoles(id) {
  const h = state.hosts.find((x) => x.runner_id === id);
  const row = [...$('hosts').querySelectorAll('tbody tr')].find((r) => r.dataset.id === id);
  if (!h || !row) return;
  state.editing = id;
  const have = new Set(roleNames(h));
  const cell = row.lastElementChild;
  clear(cell);
  const box = el('div', { class: 'roles-edit', role: 'group', 'aria-label': `Roles of ${h.public_hostname}` });
  for (const r of (state.status && state.status.roles) || ROLES) {
    box.append(el('label', {}, el('input', { type: 'checkbox', value: r, checked: have.has(r) }), r));
  }
  const save = el('button', { type: 'button' }, 'Save');
  const cancel = el('button', { type: 'button', class: 'plain' }, 'Cancel');
  save.addEventListener('click', async () => {
    const roles = [...box.querySelectorAll('input:checked')].map((i) => ({ role_name: i.value }));
    try {
      await api('PUT', `/api/v1/platform/infrastructure/runners/${encodeURIComponent(id)}/roles`, { roles });
      say(`Roles of ${h.public_hostname} set.`);
    } catch (e) { failed(e); }
    state.editing = null;
    await loadHosts();
  });
  cancel.addEventListener('click', () => { state.editing = null; renderHosts(); });
  box.append(save, cancel);
  cell.append(box);
  box.querySelector('input').focus();
}

async function removeHost(id) {
  const h = state.hosts.find((x) => x.runner_id === id);
  const name = h ? h.public_hostname : id;
  if (!window.confirm(`Remove host ${name}? Its certificates are revoked.`)) return;
  try {
    await api('DELETE', `/api/v1/platform/infrastructure/runners/${encodeURIComponent(id)}`);
    say(`Removed ${name}.`);
  } catch (e) { failed(e); }
  await loadHosts();
}

function renderCounts() {
  const hour = Date.now() / 1000 - 3600;
  const recent = state.events.filter((e) => e.at >= hour);
  const n = (k) => recent.filter((e) => e.event === k).length;
  const counts = [
    ['Registered', state.hosts.length],
    ['Connected', state.hosts.filter((h) => h.connected).length],
    ['Enrolled, last hour', n('committed')],
    ['Refused, last hour', n('refused')],
  ];
  const box = $('counts');
  clear(box);
  for (const [label, value] of counts) {
    box.append(el('div', { class: 'count' }, el('strong', { text: String(value) }), label));
  }
  renderChart(recent);
}

function renderChart(recent) {
  const NS = 'http://www.w3.org/2000/svg';
  const steps = 12;
  const now = Date.now() / 1000;
  const enrolled = new Array(steps).fill(0);
  const refused = new Array(steps).fill(0);
  for (const e of recent) {
    const i = Math.min(steps - 1, Math.floor((e.at - (now - 3600)) / 300));
    if (i < 0) continue;
    if (e.event === 'committed') enrolled[i] += 1;
    if (e.event === 'refused') refused[i] += 1;
  }
  const top = Math.max(1, ...enrolled, ...refused);
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 600 120');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Last hour: ${enrolled.reduce((a, b) => a + b, 0)} enrolled, ` +
    `${refused.reduce((a, b) => a + b, 0)} refused`);
  const bar = (x, value, cls) => {
    const h = Math.round((value / top) * 90);
    const r = document.createElementNS(NS, 'rect');
    r.setAttribute('x', String(x));
    r.setAttribute('y', String(100 - h));
    r.setAttribute('width', '18');
    r.setAttribute('height', String(h));
    r.setAttribute('class', cls);
    const t = document.createElementNS(NS, 'title');
    t.textContent = `${value} ${cls}`;
    r.append(t);
    svg.append(r);
  };
  for (let i = 0; i < steps; i += 1) {
    bar(10 + i * 48, enrolled[i], 'enrolled');
    bar(30 + i * 48, refused[i], 'refused');
    const label = document.createElementNS(NS, 'text');
    label.setAttribute('x', String(10 + i * 48));
    label.setAttribute('y', '115');
    label.textContent = `-${60 - i * 5}m`;
    svg.append(label);
  }
  const box = $('chart');
  clear(box);
  box.append(svg);
}

// --- tokens --------------------------------------------------------------------------------

async function loadTokens() {
  const r = await api('GET', '/api/v1/platform/configuration/security/enrollment-tokens');
  state.tokens = r.tokens || [];
  const tbody = $('tokens').querySelector('tbody');
  const frag = document.createDocumentFragment();
  for (const t of state.tokens) {
    const uses = t.max_uses ? `${t.uses}/${t.max_uses}` : String(t.uses);
    const revoke = t.kind === 'emergency' ? el('span', { class: 'muted', text: 'kept' })
      : el('button', { type: 'button', class: 'danger', 'data-act': 'revoke', 'data-id': t.token_id,
        'aria-label': `Revoke token ${t.token_id}` }, 'Revoke');
    frag.append(el('tr', {},
      el('td', { text: t.token_id }),
      el('td', { text: t.kind }),
      el('td', { text: (t.roles || []).join(', ') || '-' }),
      el('td', { text: uses }),
      el('td', { text: when(t.created) }),
      el('td', { text: t.expires ? when(t.expires) : 'never' }),
      el('td', { text: t.description || '' }),
      el('td', {}, revoke)));
  }
  clear(tbody);
  tbody.append(frag);
  if (!state.status) await loadPlatform();
}

function seconds(text) {
  const m = /^\s*(\d+)\s*([smhd]?)\s*$/.exec(text);
  if (!m) return null;
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
  return Number(m[1]) * unit;
}

async function createToken(ev) {
  ev.preventDefault();
  $('token-error').textContent = '';
  const persistent = document.querySelector('input[name="kind"]:checked').value === 'persistent';
  const req = {
    persistent,
    roles: [...document.querySelectorAll('#token-roles input:checked')].map((i) => i.value),
  };
  if (!persistent) {
    const v = seconds($('validity').value);
    if (v === null) {
      $('token-error').textContent = 'Valid for: write it as 90m, 12h or 2d.';
      return;
    }
    req.validity_in_seconds = v;
  }
  if ($('max-uses').value) req.max_uses = Number($('max-uses').value);
  const sources = $('sources').value.split(',').map((s) => s.trim()).filter(Boolean);
  if (sources.length) req.allowed_sources = sources;
  if ($('description').value.trim()) req.description = $('description').value.trim();
  try {
    const r = await api('POST',
      '/api/v1/platform/configuration/security/enrollment-tokens?install_command=true', req);
    showMade(r);
    await loadTokens();
  } catch (e) {
    $('token-error').textContent = e.code ? `${e.message} (${e.code})` : String(e.message);
  }
}

function showMade(r) {
  const s = state.status || {};
  const coordinator = (s.coordinator && s.coordinator.advertise && s.coordinator.advertise[0]) || location.host;
  const pin = (s.ca && s.ca.serving_key_curl_pin) || 'sha256//COORDINATOR-KEY-PIN';
  const quoted = `'${r.token}'`;
  $('made-id').textContent = r.token_id;
  $('made-token').textContent = r.token;
  $('made-oneliner').textContent = r.install_command || '';
  $('made-cloudinit').textContent = [
    '#cloud-config',
    'runcmd:',
    '  - |',
    '    f=$(mktemp) || exit 1',
    '    n=0',
    `    until curl -fsSk --connect-timeout 10 --pinnedpubkey '${pin}' \\`,
    `        -o "$f" https://${coordinator}/install.sh; do`,
    '      st=$?',
    '      case $st in 60 | 90) exit "$st" ;; esac',
    '      n=$((n + 1))',
    '      [ "$n" -lt 60 ] || exit "$st"',
    '      sleep 5',
    '    done',
    `    MUSTER_ROLES_TOKEN=${quoted} sh "$f"`,
  ].join('\n');
  $('made-package').textContent = [
    'sudo apt install ./muster_*_amd64.deb        # or: sudo dnf install ./muster-*.x86_64.rpm',
    `MUSTER_ROLES_TOKEN=${quoted} sudo --preserve-env=MUSTER_ROLES_TOKEN \\`,
    `  muster install --coordinator-host ${coordinator}`,
  ].join('\n');
  $('token-made').hidden = false;
  $('token-made').focus();
}

async function revokeToken(id) {
  if (!window.confirm(`Revoke token ${id}? Every coordinator refuses it from now on.`)) return;
  try {
    await api('DELETE',
      `/api/v1/platform/configuration/security/enrollment-tokens/${encodeURIComponent(id)}`);
    say(`Revoked token ${id}.`);
  } catch (e) { failed(e); }
  await loadTokens();
}

// --- audit ---------------------------------------------------------------------------------

async function loadEvents() {
  for (;;) {
    const r = await api('GET',
      `/api/v1/platform/configuration/security/enrollment-tokens/_audit?after=${state.lastSeq}&limit=1000`);
    const got = r.events || [];
    for (const e of got) state.events.push(e);
    if (got.length) state.lastSeq = got[got.length - 1].seq;
    if (got.length < 1000) break;
  }
  if (state.view === 'audit') renderAudit();
  if (state.view === 'hosts') renderCounts();
}

function auditShown() {
  const kind = $('audit-kind').value;
  const token = $('audit-token').value.trim();
  const host = $('audit-host').value.trim().toLowerCase();
  const since = Number($('audit-since').value);
  const from = since ? Date.now() / 1000 - since : 0;
  return state.events.filter((e) => (!kind || e.event === kind)
    && (!token || e.token_id === token)
    && (!host || e.node_id === host || (e.hostname || '').toLowerCase() === host)
    && e.at >= from).reverse();
}

function renderAudit() {
  const shown = auditShown();
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  state.auditPage = Math.min(state.auditPage, pages - 1);
  const slice = shown.slice(state.auditPage * PAGE, (state.auditPage + 1) * PAGE);
  const frag = document.createDocumentFragment();
  for (const e of slice) {
    const about = [];
    if (e.hostname) about.push(`host ${e.hostname}`);
    if (e.node_id) about.push(`node ${e.node_id}`);
    if (e.token_id) about.push(`token ${e.token_id}`);
    if (e.target) about.push(e.target);
    const reason = el('td', {});
    if (e.reason) {
      reason.append(el('code', { text: e.reason }));
      if (MEANING[e.reason]) reason.append(el('span', { class: 'meaning', text: MEANING[e.reason] }));
    }
    frag.append(el('tr', {},
      el('td', { text: when(e.at) }),
      el('td', { text: e.event }),
      el('td', { text: e.actor || '-' }),
      el('td', { text: about.join(', ') || '-' }),
      el('td', { text: e.source || '-' }),
      reason));
  }
  const tbody = $('audit').querySelector('tbody');
  clear(tbody);
  tbody.append(frag);
  $('audit-page').textContent = `page ${state.auditPage + 1} of ${pages} (${shown.length} events)`;
  $('audit-newer').disabled = state.auditPage === 0;
  $('audit-older').disabled = state.auditPage >= pages - 1;
}

// --- platform ------------------------------------------------------------------------------

async function loadPlatform() {
  const s = await api('GET', '/api/v1/platform/_status');
  state.status = s;
  const facts = [
    ['Version', s.version],
    ['This coordinator', (s.coordinator.advertise || []).join(', ')],
    ['Coordinators\' names', (s.coordinators || []).join(', ') || '-'],
    ['Store', `${s.store.kind}${s.store.members.length ? ` (${s.store.members.join(', ')})` : ''}`],
    ['Store health', s.store.healthy ? 'answering' : 'NOT answering'],
    ['Hosts', `${s.hosts.registered} registered, ${s.hosts.connected} connected`],
    ['HTTP CA pin', s.ca.http_ca_pin],
    ['Transport CA pin', s.ca.transport_ca_pin],
    ['Serving key (curl --pinnedpubkey)', s.ca.serving_key_curl_pin],
  ];
  const dl = $('platform');
  clear(dl);
  for (const [k, v] of facts) dl.append(el('dt', { text: k }), el('dd', { text: String(v) }));
  const tbody = $('expiring').querySelector('tbody');
  clear(tbody);
  for (const h of s.expiring_within_14_days || []) {
    tbody.append(el('tr', {}, el('td', { text: h.public_hostname }),
      el('td', { text: h.runner_id }), el('td', { text: when(h.certificate_not_after) })));
  }
  const box = $('token-roles');
  if (!box.querySelector('input')) {
    for (const r of s.roles || ROLES) {
      box.append(el('label', {}, el('input', { type: 'checkbox', value: r }), r));
    }
  }
}

// --- wiring --------------------------------------------------------------------------------

async function copy(id) {
  try {
    await navigator.clipboard.writeText($(id).textContent);
    say('Copied.');
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($(id));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    say('Selected: copy it with Ctrl+C.');
  }
}

function start() {
  $('sign-in').addEventListener('submit', signIn);
  for (const r of document.querySelectorAll('input[name="with"]')) {
    r.addEventListener('change', () => {
      const key = document.querySelector('input[name="with"]:checked').value === 'key';
      $('with-key').hidden = !key;
      $('with-password').hidden = key;
    });
  }
  $('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  $('host-filter').addEventListener('input', () => { state.hostPage = 0; renderHosts(); });
  $('hosts-prev').addEventListener('click', () => { state.hostPage -= 1; renderHosts(); });
  $('hosts-next').addEventListener('click', () => { state.hostPage += 1; renderHosts(); });
  $('hosts').querySelector('thead').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-sort]');
    if (!b) return;
    state.sort = { key: b.dataset.sort, dir: state.sort.key === b.dataset.sort ? -state.sort.dir : 1 };
    state.hostPage = 0;
    renderHosts();
  });
  $('hosts').querySelector('tbody').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-act]');
    if (!b) return;
    if (b.dataset.act === 'roles') editRoles(b.dataset.id);
    if (b.dataset.act === 'remove') removeHost(b.dataset.id);
  });
  $('token-form').addEventListener('submit', createToken);
  $('tokens').querySelector('tbody').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-act="revoke"]');
    if (b) revokeToken(b.dataset.id);
  });
  for (const b of document.querySelectorAll('button[data-copy]')) {
    b.addEventListener('click', () => copy(b.dataset.copy));
  }
  $('made-done').addEventListener('click', () => {
    for (const id of ['made-token', 'made-oneliner', 'made-cloudinit', 'made-package']) $(id).textContent = '';
    $('token-made').hidden = true;
  });
  for (const k of KINDS) $('audit-kind').append(el('option', { value: k }, k));
  $('audit-filter').addEventListener('input', () => { state.auditPage = 0; renderAudit(); });
  $('audit-filter').addEventListener('submit', (ev) => ev.preventDefault());
  $('audit-newer').addEventListener('click', () => { state.auditPage -= 1; renderAudit(); });
  $('audit-older').addEventListener('click', () => { state.auditPage += 1; renderAudit(); });
  fetch('/console/session', { credentials: 'same-origin', cache: 'no-store', headers: { 'X-Muster-Console': '1' } })
    .then((r) => (r.ok ? r.json() : null))
    .then((s) => (s ? signedIn(s) : signedOut('')))
    .catch(() => signedOut('The coordinator did not answer.'));
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
