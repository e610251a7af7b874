// The ghostless lobby page: the listed rooms with live occupancy.
//
// One WebSocket to /lobby (protoo framing, docs/protocol.md): `rooms` (the
// whole list) at once, then `roomChanged` / `roomClosed` as people come and
// go.  The socket is kept honest with a `ping` request and reconnects with
// exponential backoff and jitter; each reconnect starts from a fresh `rooms`.

const $ = (selector) => document.querySelector(selector);

const PING_INTERVAL_MS = 20000;
const SILENCE_LIMIT_MS = 45000; // nothing heard for this long: the socket is dead
const BACKOFF = { baseMs: 500, maxMs: 8000 };

const rooms = new Map(); // roomId -> summary {roomId, peers, capacity, queued, listed}
const rows = new Map(); // roomId -> <li>
let socket = null;
let attempt = 0;
let retryTimer = null;
let pingTimer = null;
let lastHeard = 0;
let nextId = 1;

// -- the socket -----------------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  if (socket) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/lobby`, 'protoo');
  socket = ws;
  setStatus(attempt ? 'reconnecting' : 'connecting');
  ws.onopen = () => { lastHeard = Date.now(); };
  ws.onmessage = (event) => {
    if (socket !== ws) return;
    lastHeard = Date.now();
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.notification) receive(message.method, message.data || {});
  };
  ws.onclose = () => lost(ws);
  clearInterval(pingTimer);
  pingTimer = setInterval(() => keepalive(ws), PING_INTERVAL_MS);
}

function keepalive(ws) {
  if (socket !== ws) return;
  if (ws.readyState === WebSocket.OPEN && Date.now() - lastHeard > SILENCE_LIMIT_MS) {
    ws.close(4000, 'silent'); // a dead link may take minutes to report itself
    lost(ws);
  } else if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ request: true, id: nextId++, method: 'ping', data: {} }));
  }
}

function lost(ws) {
  if (socket !== ws) return; // already replaced
  socket = null;
  clearInterval(pingTimer);
  setStatus('reconnecting');
  scheduleRetry();
}

function scheduleRetry() {
  // Exponential backoff with full jitter, so a restarted server is not stampeded.
  clearTimeout(retryTimer);
  const ceiling = Math.min(BACKOFF.maxMs, BACKOFF.baseMs * 2 ** attempt);
  attempt += 1;
  retryTimer = setTimeout(() => {
    if (navigator.onLine === false) scheduleRetry(); // 'online' brings us back sooner
    else connect();
  }, Math.random() * ceiling);
}

function reconnectNow() {
  if (!socket) { attempt = 0; connect(); }
}

window.addEventListener('online', reconnectNow);
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') reconnectNow();
});

// -- what the server says ------------------------------------------------------------

function receive(method, data) {
  switch (method) {
    case 'rooms':
      // The whole list: rooms that closed while we were away disappear here.
      rooms.clear();
      for (const room of data.rooms || []) rooms.set(room.roomId, room);
      attempt = 0;
      setStatus('live');
      render();
      break;
    case 'roomChanged':
      if (data.listed === false) rooms.delete(data.roomId);
      else rooms.set(data.roomId, data);
      render();
      break;
    case 'roomClosed':
      rooms.delete(data.roomId);
      render();
      break;
    default:
      break;
  }
}

// -- the page ---------------------------------------------------------------------------

function setStatus(status) {
  const label = $('#lobby-state');
  label.dataset.state = status;
  label.textContent = status === 'live' ? 'live' : `${status}…`;
  document.body.dataset.lobby = status;
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function row(roomId) {
  let item = rows.get(roomId);
  if (!item) {
    item = document.createElement('li');
    item.className = 'room';
    item.dataset.roomId = roomId;
    item.innerHTML = '<span class="room-name"></span>'
      + '<span class="occupancy"><span class="count"></span><span class="meter"><i></i></span></span>'
      + '<span class="tags"><span class="tag full" hidden>full</span><span class="tag queued" hidden></span></span>'
      + '<a class="button join">Join</a>';
    item.querySelector('.room-name').textContent = roomId;
    item.querySelector('.room-name').title = roomId;
    const link = item.querySelector('.join');
    link.href = `/?room=${encodeURIComponent(roomId)}`;
    link.setAttribute('aria-label', `Join room ${roomId}`);
    rows.set(roomId, item);
  }
  return item;
}

function paint(item, room) {
  const { peers, capacity, queued } = room;
  const changed = item.dataset.peers !== undefined
    && (item.dataset.peers !== String(peers) || item.dataset.queued !== String(queued));
  item.dataset.peers = String(peers);
  item.dataset.queued = String(queued);
  item.dataset.capacity = capacity === null || capacity === undefined ? '' : String(capacity);
  const full = capacity !== null && capacity !== undefined && peers >= capacity;
  item.classList.toggle('is-full', full);
  item.querySelector('.count').textContent = capacity === null || capacity === undefined
    ? plural(peers, 'person', 'people')
    : `${peers} / ${capacity}`;
  item.querySelector('.count').title = plural(peers, 'person', 'people') + ' in the call';
  const meter = item.querySelector('.meter');
  meter.hidden = capacity === null || capacity === undefined;
  if (!meter.hidden) meter.firstChild.style.width = `${Math.min(100, (100 * peers) / capacity)}%`;
  item.querySelector('.full').hidden = !full;
  const waiting = item.querySelector('.queued');
  waiting.hidden = !queued;
  waiting.textContent = `${queued} waiting`;
  if (changed) {
    // A short highlight so a changing count catches the eye.
    item.classList.remove('flash');
    void item.offsetWidth;
    item.classList.add('flash');
  }
}

function render() {
  const list = $('#rooms');
  const ids = [...rooms.keys()].sort((a, b) => a.localeCompare(b));
  for (const [roomId, item] of rows) {
    if (!rooms.has(roomId)) { item.remove(); rows.delete(roomId); }
  }
  let previous = null;
  for (const roomId of ids) {
    const item = row(roomId);
    paint(item, rooms.get(roomId));
    // Keep the DOM in sorted order, moving nodes only when needed.
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== item) list.insertBefore(item, expected);
    previous = item;
  }
  $('#empty').hidden = ids.length > 0;
  let people = 0;
  let waiting = 0;
  for (const room of rooms.values()) { people += room.peers; waiting += room.queued || 0; }
  $('#totals').textContent = ids.length
    ? `${plural(people, 'person', 'people')} in ${plural(ids.length, 'room', 'rooms')}`
      + (waiting ? `, ${waiting} waiting` : '')
    : '';
}

$('#room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('#room-name').value.trim();
  if (name) location.href = `/?room=${encodeURIComponent(name)}`;
});

window.ghostlessLobby = { rooms }; // for the console (and tests)
render();
connect();
