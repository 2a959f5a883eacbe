// The "Connect as a user" panel: a client of the service inside the page, built on the
// client library (./wspresence/ is a copy of the build of the repository's client/). It
// shows the connection's state, its position and every message received, once, in order.
import { Client } from './wspresence/index.js';

const $ = (sel) => document.querySelector(sel);
let client = null;

function note(text, cls) {
  const li = document.createElement('li');
  li.textContent = text;
  if (cls) li.className = cls;
  const list = $('#connect-messages');
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function showPosition() {
  const at = client && client.position;
  $('#connect-position').textContent = at ? `${at.epoch} / ${at.offset}` : '–';
}

function connect(ev) {
  ev.preventDefault();
  if (client) client.close();
  $('#connect-messages').replaceChildren();
  $('#connect-error').textContent = '';
  const url = new URL('/', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const c = new Client({ url, getToken: () => $('#connect-token').value.trim() });
  client = c;
  c.on('state', (state) => {
    if (client !== c) return;
    $('#connect-state').textContent = state;
    $('#connect-button').disabled = state !== 'closed';
    $('#disconnect-button').disabled = state === 'closed';
    showPosition();
  });
  c.on('message', (m) => {
    note(`#${m.offset} ${m.body}`);
    showPosition();
  });
  c.on('discontinuity', (d) => note(`missed messages could not be replayed (${d.reason}); continuing from ${d.offset}`, 'gap'));
  c.on('error', (e) => {
    $('#connect-error').textContent = `${e.name}: ${e.message}${e.fatal ? '' : ' (reconnecting)'}`;
  });
  c.connect();
}

document.addEventListener('DOMContentLoaded', () => {
  $('#connect-form').addEventListener('submit', connect);
  $('#disconnect-button').addEventListener('click', () => { if (client) client.close(); });
});
