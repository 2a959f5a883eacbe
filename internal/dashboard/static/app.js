// wspresence dashboard: plain JavaScript, no build step. Every data call goes to the
// backend endpoints with the API key, which stays in this tab's session storage.
'use strict';

const $ = (sel) => document.querySelector(sel);
const state = { key: '', cursor: [], next: '', feedSeq: 0, refreshTimer: 0 };

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

function fmtTime(t) {
  if (!t) return 'never';
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

async function loadTotals() {
  try {
    const text = await (await fetch('/metrics')).text();
    const value = (name) => (new RegExp('^' + name + ' (\\S+)$', 'm').exec(text) || [])[1];
    $('#online-count').textContent = value('wspresence_online_users') ?? '–';
    $('#connection-count').textContent = value('wspresence_connections') ?? '–';
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
    case 'MessageDelivered': return `message ${d.messageId} reached ${d.userId} on ${d.connections} connection(s)`;
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

async function followEvents() {
  for (;;) {
    try {
      const headers = state.feedSeq ? { 'Last-Event-ID': String(state.feedSeq) } : {};
      const resp = await api('/events?after=' + state.feedSeq, { headers });
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
          let id = 0, data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = Number(line.slice(4));
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data) {
            state.feedSeq = Math.max(state.feedSeq, id);
            addEvent(JSON.parse(data));
          }
        }
      }
    } catch (e) {
      if (e.message === 'unauthorized') return;
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

function showKeyForm(message) {
  $('#app').hidden = true;
  $('#key-section').hidden = false;
  if (message) $('#key-title').textContent = 'API key – ' + message;
}

function start() {
  state.key = keyFromHash();
  if (!state.key) { showKeyForm(); return; }
  $('#key-section').hidden = true;
  $('#app').hidden = false;
  loadOnline().catch(() => {});
  loadTotals();
  followEvents();
  setInterval(() => { loadOnline().catch(() => {}); loadTotals(); }, 5000);
}

document.addEventListener('DOMContentLoaded', () => {
  $('#key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem('wspresence-key', $('#key-input').value.trim());
    start();
  });
  $('#send-form').addEventListener('submit', (ev) => sendMessage(ev).catch(() => {}));
  $('#search-form').addEventListener('submit', (ev) => search(ev).catch(() => {}));
  $('#next-page').addEventListener('click', () => { if (state.next) { state.cursor.push(state.next); loadOnline(); } });
  $('#first-page').addEventListener('click', () => { state.cursor = []; loadOnline(); });
  $('#page-size').addEventListener('change', () => { state.cursor = []; loadOnline(); });
  start();
});
