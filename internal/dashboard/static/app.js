// wspresence dashboard: plain JavaScript, no build step. Every data call goes to the
// backend endpoints with the API key, which stays in this tab's session storage.
'use strict';

const $ = (sel) => document.querySelector(sel);
const state = { key: '', cursor: [], next: '', feedId: '', feedFromHead: false, refreshTimer: 0, pollTimer: 0, session: 0, feedAbort: null };

function keyFromHash() {
  const m = /(?:^|&)key=([^&]+)/.exec(location.hash.slice(1));
  if (m) {
    sessionStorage.setItem('wspresence-key', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem('wspresence-key') || '';
}

async function api(path, init = {}) {
  const headers = Object.assign({ 'X-Api-Key': state.key }, init.headers || {});
  const resp = await fetch(path, Object.assign({}, init, { headers }));
  if (resp.status === 401) {
    sessionStorage.removeItem('wspresence-key');
    showKeyForm('That API key was refused.');
    throw new Error('unauthorized');
  }
  return resp;
}

// plural returns "1 user" or "2 users".
function plural(n, one, many) {
  return Number(n) === 1 ? one : many;
}

// fmtTime shows a time; LastActivity of a user never seen is the zero time, shown as never.
function fmtTime(t) {
  if (!t || t.startsWith('0001-01-01')) return 'never';
  const d = new Date(t);
  return d.toLocaleString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// ---- online users, paginated
async function loadOnline() {
  const size = $('#page-size').value;
  const token = state.cursor[state.cursor.length - 1] || '';
  const q = new URLSearchParams({ limit: size });
  if (token) q.set('nextToken', token);
  const resp = await api('/user/online?' + q);
  const users = await resp.json();
  state.next = resp.headers.get('X-Next-Token') || '';
  const body = $('#online-table tbody');
  const rows = users.map((u) => {
    const tr = document.createElement('tr');
    tr.dataset.user = u.UserId;
    tr.append(cell(u.UserId), cell(String(u.Connections)), cell(fmtTime(u.LastActivity)));
    return tr;
  });
  body.replaceChildren(...rows);
  $('#online-caption').textContent = users.length
    ? `Users with at least one live connection, by user id (page ${state.cursor.length + 1})`
    : 'Nobody is online.';
  $('#next-page').disabled = !state.next;
  $('#first-page').disabled = state.cursor.length === 0;
}

// loadTotals shows the totals, only while a key the server accepted is in use.
async function loadTotals() {
  if ($('#app').hidden) return;
  try {
    const text = await (await fetch('/metrics')).text();
    const value = (name) => (new RegExp('^' + name + ' (\\S+)$', 'm').exec(text) || [])[1];
    const online = value('wspresence_online_users') ?? '–';
    const conns = value('wspresence_connections') ?? '–';
    $('#online-count').textContent = online;
    $('#online-label').textContent = plural(online, 'online user', 'online users');
    $('#connection-count').textContent = conns;
    $('#connection-label').textContent = plural(conns, 'connection', 'connections');
    $('#totals').hidden = $('#app').hidden;
  } catch { /* totals are a nicety */ }
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => { loadOnline().catch(() => {}); loadTotals(); }, 150);
}

// ---- live events (Server-Sent Events read with fetch, so the key travels in a header)
function describe(env) {
  const d = env.detail || {};
  switch (env['detail-type']) {
    case 'UserOnline': return `${d.userId} came online (connection ${d.connectionId})`;
    case 'UserOffline': return `${d.userId} went offline`;
    case 'MessageDelivered': return `message ${d.messageId} reached ${d.userId} on ${d.connections} ${plural(d.connections, 'connection', 'connections')}`;
    case 'MessageUndeliverable': return `message ${d.messageId} could not reach ${d.userId} (${d.reason})`;
    default: return JSON.stringify(d);
  }
}

function addEvent(env) {
  const li = document.createElement('li');
  const kind = document.createElement('span');
  kind.className = 'kind ' + env['detail-type'];
  kind.textContent = env['detail-type'];
  const when = document.createElement('time');
  when.dateTime = env.detail && env.detail.at || env.time;
  when.className = 'muted';
  when.textContent = ' ' + fmtTime(when.dateTime) + ' ';
  li.append(kind, when, document.createTextNode(describe(env)));
  const feed = $('#feed');
  feed.prepend(li);
  while (feed.children.length > 200) feed.lastChild.remove();
  if (env['detail-type'] === 'UserOnline' || env['detail-type'] === 'UserOffline') scheduleRefresh();
}

async function followEvents(session) {
  while (session === state.session) {
    try {
      // The first read replays everything kept; later ones resume after the last event id
      // (EPOCH:SEQ). A 410 (events pruned, or an id of another epoch: the store was
      // restored) starts again from the head.
      const headers = state.feedId ? { 'Last-Event-ID': state.feedId } : {};
      state.feedAbort = new AbortController();
      const path = state.feedId || state.feedFromHead ? '/events' : '/events?after=0';
      const resp = await api(path, { headers, signal: state.feedAbort.signal });
      if (resp.status === 410) {
        state.feedId = '';
        state.feedFromHead = true;
        throw new Error('gone');
      }
      $('#feed-status').textContent = 'live';
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let id = '', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data) {
            if (id) state.feedId = id;
            addEvent(JSON.parse(data));
          }
        }
      }
    } catch (e) {
      if (e.message === 'unauthorized' || session !== state.session) return;
    }
    $('#feed-status').textContent = 'reconnecting…';
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- forms
async function sendMessage(ev) {
  ev.preventDefault();
  const user = $('#send-user').value.trim();
  const body = $('#send-body').value;
  const resp = await api('/messages', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ UserId: user, Body: body }) });
  const reply = await resp.json();
  $('#send-result').textContent = resp.ok
    ? `Accepted: message ${reply.messageIds[0]} for ${user}.`
    : `Refused: ${reply.message}`;
}

async function search(ev) {
  ev.preventDefault();
  const ids = $('#search-ids').value;
  const resp = await api('/user/online?' + new URLSearchParams({ userIds: ids }));
  const reply = await resp.json();
  if (!resp.ok) {
    $('#search-error').textContent = reply.message;
    $('#search-table').hidden = true;
    return;
  }
  $('#search-error').textContent = '';
  const rows = reply.map((u) => {
    const tr = document.createElement('tr');
    tr.append(cell(u.UserId), cell(u.IsOnline ? 'online' : 'offline', u.IsOnline ? 'online' : 'muted'), cell(String(u.Connections)), cell(fmtTime(u.LastActivity)));
    return tr;
  });
  $('#search-table tbody').replaceChildren(...rows);
  $('#search-table').hidden = false;
}

// showKeyForm asks for a key and hides every figure until the server accepts one: the
// totals, the tables and the feed are cleared and the polling and the feed stop.
function showKeyForm(message) {
  state.session++;
  clearInterval(state.pollTimer);
  clearTimeout(state.refreshTimer);
  if (state.feedAbort) state.feedAbort.abort();
  $('#app').hidden = true;
  $('#totals').hidden = true;
  $('#online-count').textContent = '–';
  $('#connection-count').textContent = '–';
  $('#online-table tbody').replaceChildren();
  $('#search-table tbody').replaceChildren();
  $('#feed').replaceChildren();
  $('#feed-status').textContent = 'connecting…';
  state.feedId = '';
  state.feedFromHead = false;
  state.cursor = [];
  $('#key-section').hidden = false;
  $('#key-title').textContent = message ? 'API key – ' + message : 'API key';
  $('#key-input').value = '';
}

// start checks the key with a first request, and only once the server accepts it shows
// the data and starts the feed and the polling.
async function start() {
  state.key = keyFromHash();
  if (!state.key) { showKeyForm(); return; }
  const session = ++state.session;
  try {
    await loadOnline();
  } catch (e) {
    // Refused: the key form is shown. Anything else (the server restarting): try again.
    if (e.message !== 'unauthorized') setTimeout(() => { if (session === state.session) start().catch(() => {}); }, 2000);
    return;
  }
  if (session !== state.session) return;
  $('#key-section').hidden = true;
  $('#app').hidden = false;
  loadTotals();
  followEvents(session);
  state.pollTimer = setInterval(() => { loadOnline().catch(() => {}); loadTotals(); }, 5000);
}

document.addEventListener('DOMContentLoaded', () => {
  $('#key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem('wspresence-key', $('#key-input').value.trim());
    start().catch(() => {});
  });
  $('#send-form').addEventListener('submit', (ev) => sendMessage(ev).catch(() => {}));
  $('#search-form').addEventListener('submit', (ev) => search(ev).catch(() => {}));
  $('#next-page').addEventListener('click', () => { if (state.next) { state.cursor.push(state.next); loadOnline(); } });
  $('#first-page').addEventListener('click', () => { state.cursor = []; loadOnline(); });
  $('#page-size').addEventListener('change', () => { state.cursor = []; loadOnline(); });
  start().catch(() => {});
});
