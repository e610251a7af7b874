// The ghostless demo call page: tiles, participants with live status and
// connection quality, the waiting queue, chat.
import { GhostlessClient, LAYERS } from '/ghostless.js';

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const storage = window.localStorage;

// One identity per browser profile: a second tab is the same user (handover).
let userId = storage.getItem('ghostless.userId');
if (!userId) {
  userId = 'u-' + crypto.getRandomValues(new Uint32Array(2)).join('');
  storage.setItem('ghostless.userId', userId);
}

$('#room').value = params.get('room') || 'demo';
$('#name').value = params.get('name') || storage.getItem('ghostless.name') || '';

const tiles = new Map(); // peerId -> tile element
const meters = new Map(); // peerId -> {analyser, data, bar}
let audioContext = null;
let client = null;

// What the server's `peerQuality` reasons mean, for tooltips.
const REASONS = {
  rtt: 'high latency',
  loss: 'packet loss',
  jitter: 'jitter',
  consent: 'missed connectivity checks',
};

function qualityOf(peerId) {
  if (peerId === client.peerId) return { quality: client.quality, reasons: client.qualityReasons };
  const peer = client.peers.get(peerId);
  return peer ? { quality: peer.quality || 'good', reasons: peer.qualityReasons || [] }
              : { quality: 'good', reasons: [] };
}

/** A coloured dot (green, amber, red) whose tooltip gives the reasons. */
function paintQuality(element, { quality, reasons }) {
  const why = reasons.map((r) => REASONS[r] || r).join(', ');
  const text = `Connection ${quality}` + (why ? `: ${why}` : '');
  element.dataset.quality = quality;
  element.dataset.reasons = reasons.join(',');
  element.title = text;
  element.setAttribute('aria-label', text);
  const label = element.querySelector('.quality-text');
  if (label) label.textContent = quality === 'good' ? '' : quality;
}

function tile(peerId, label, local = false) {
  let element = tiles.get(peerId);
  if (!element) {
    element = document.createElement('div');
    element.className = 'tile' + (local ? ' local' : '');
    element.dataset.peerId = peerId;
    element.innerHTML = '<video autoplay playsinline></video><span class="name"></span>'
      + '<span class="quality" role="img"><i></i><span class="quality-text"></span></span>'
      + (local ? '' : '<span class="layer" title="Received resolution"></span>'
        + '<select class="preferred" title="Preferred quality">'
        + '<option value="">Auto</option><option value="low">Low</option>'
        + '<option value="medium">Medium</option><option value="high">High</option></select>');
    const video = element.querySelector('video');
    video.muted = true; // audio plays through <audio>
    if (!local) {
      // What the receiver decodes: the simulcast layer the server forwards.
      const layer = element.querySelector('.layer');
      video.addEventListener('resize', () => {
        layer.textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '';
      });
      element.querySelector('.preferred').addEventListener('change', (event) => {
        const choice = event.target.value;
        client.setPreferredQuality(peerId, choice ? LAYERS[choice] : null).catch(() => {});
      });
    }
    $('#tiles').append(element);
    tiles.set(peerId, element);
  }
  element.querySelector('.name').textContent = label;
  paintQuality(element.querySelector('.quality'), qualityOf(peerId));
  return element;
}

function removeTile(peerId) {
  const element = tiles.get(peerId);
  if (element) element.remove();
  tiles.delete(peerId);
}

function renderParticipants() {
  const list = $('#participants');
  list.textContent = '';
  const me = document.createElement('li');
  me.dataset.peerId = client.peerId;
  me.dataset.status = 'connected';
  me.innerHTML = '<span class="quality" role="img"><i></i></span><span class="who"></span><span class="badge">you</span>';
  me.querySelector('.who').textContent = client.displayName;
  paintQuality(me.querySelector('.quality'), qualityOf(client.peerId));
  list.append(me);
  if (tiles.has(client.peerId)) {
    paintQuality(tiles.get(client.peerId).querySelector('.quality'), qualityOf(client.peerId));
  }
  for (const peer of client.peers.values()) {
    const item = document.createElement('li');
    item.dataset.peerId = peer.id;
    item.dataset.status = peer.status;
    item.dataset.reason = peer.reason || '';
    const status = peer.status === 'left' ? `left (${peer.reason})` : peer.status;
    item.innerHTML = '<span class="quality" role="img"><i></i></span><span class="who"></span>'
      + '<span class="badge"></span><span class="level"><i></i></span>';
    item.querySelector('.who').textContent = peer.displayName || peer.id;
    item.querySelector('.badge').textContent = status;
    paintQuality(item.querySelector('.quality'), qualityOf(peer.id));
    const meter = meters.get(peer.id);
    if (meter) meter.bar = item.querySelector('.level i');
    list.append(item);
    if (peer.status === 'left') removeTile(peer.id);
    else if (tiles.has(peer.id)) tile(peer.id, peer.displayName || peer.id);
  }
}

function meterFor(peerId, track) {
  audioContext = audioContext || new AudioContext();
  const stream = new MediaStream([track]);
  // Chrome only feeds remote WebRTC audio to WebAudio while an element plays it.
  const audio = new Audio();
  audio.srcObject = stream;
  audio.play().catch(() => {});
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 256;
  audioContext.createMediaStreamSource(stream).connect(analyser);
  meters.set(peerId, { analyser, data: new Uint8Array(analyser.fftSize), bar: null, audio, level: 0 });
}

function updateMeters() {
  for (const meter of meters.values()) {
    meter.analyser.getByteTimeDomainData(meter.data);
    let sum = 0;
    for (const v of meter.data) sum += (v - 128) * (v - 128);
    meter.level = Math.sqrt(sum / meter.data.length) / 128;
    if (meter.bar) meter.bar.style.width = `${Math.min(100, meter.level * 400)}%`;
  }
  requestAnimationFrame(updateMeters);
}
requestAnimationFrame(updateMeters);

function addMessage(who, text) {
  const item = document.createElement('li');
  item.textContent = `${who}: ${text}`;
  $('#messages').append(item);
  item.scrollIntoView({ block: 'nearest' });
}

function setState(state, reason) {
  const label = $('#state');
  label.dataset.state = state;
  document.body.dataset.state = state;
  label.textContent = reason ? `${state}: ${reason}` : state;
  $('#banner').hidden = state !== 'reconnecting';
  $('#banner').textContent = reason === 'server_full'
    ? 'The server is full, trying again…'
    : 'Connection lost, reconnecting…';
  $('#replaced').hidden = state !== 'replaced';
  const timedOut = state === 'closed' && reason === 'queue_timeout';
  $('#queue-banner').hidden = state !== 'queued' && !timedOut;
  $('#queue-banner').classList.toggle('timedout', timedOut);
  $('#queue-retry').hidden = !timedOut;
  if (timedOut) {
    $('#queue-position').textContent = 'No seat came free in time.';
    $('#queue-detail').textContent = 'You left the queue; try again when the room is less busy.';
  }
}

function showQueue({ position, length, admitted }) {
  if (admitted) return; // statechange hides the banner
  $('#queue-position').textContent = `Waiting in the queue: position ${position} of ${length}`;
  $('#queue-detail').textContent = 'The room is full. You will join as soon as a seat frees up.';
}

$('#join-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = $('#name').value.trim() || 'guest';
  const room = $('#room').value.trim();
  storage.setItem('ghostless.name', name);
  history.replaceState(null, '', `?room=${encodeURIComponent(room)}`);
  $('#room-label').textContent = `room ${room}`;
  $('#join-form').hidden = true;
  $('#call').hidden = false;

  client = new GhostlessClient({ roomId: room, userId, displayName: name, confirmLeave: params.has('confirm') });
  window.ghostless = client;
  window.ghostlessMeters = meters;
  client.addEventListener('statechange', ({ detail }) => setState(detail.state, detail.reason));
  client.addEventListener('peers', renderParticipants);
  client.addEventListener('queue', ({ detail }) => showQueue(detail));
  client.addEventListener('speaker', ({ detail }) => {
    for (const [peerId, element] of tiles) element.classList.toggle('speaking', peerId === detail.peerId);
  });
  client.addEventListener('layers', ({ detail }) => {
    const element = tiles.get(detail.peerId);
    if (element) element.dataset.spatialLayer = detail.layers ? detail.layers.spatialLayer : '';
  });
  client.addEventListener('localstream', ({ detail }) => {
    const element = tile(client.peerId, `${name} (you)`, true);
    element.querySelector('video').srcObject = detail.stream;
  });
  client.addEventListener('track', ({ detail }) => {
    const peer = client.peers.get(detail.peerId);
    const label = peer ? peer.displayName || peer.id : detail.peerId;
    if (detail.kind === 'video') {
      tile(detail.peerId, label).querySelector('video').srcObject = new MediaStream([detail.track]);
    } else {
      meterFor(detail.peerId, detail.track);
      renderParticipants();
    }
  });
  client.addEventListener('trackended', ({ detail }) => {
    const meter = meters.get(detail.peerId);
    if (meter) { meter.audio.srcObject = null; meters.delete(detail.peerId); }
  });
  client.addEventListener('chat', ({ detail }) => addMessage(detail.displayName || detail.peerId, detail.text));
  client.addEventListener('replaced', () => {
    for (const peerId of [...tiles.keys()]) removeTile(peerId);
  });
  try {
    await client.start();
    renderParticipants();
  } catch (error) {
    // The client may already have said why (a refusal, the queue timeout).
    setState('closed', client.closeReason || String(error.message || error));
  }
});

$('#use-here').addEventListener('click', () => client.takeBack());
$('#queue-retry').addEventListener('click', () => {
  client.start().catch((error) => setState('closed', client.closeReason || String(error.message || error)));
});
$('#leave').addEventListener('click', async () => {
  await client.leave();
  for (const peerId of [...tiles.keys()]) removeTile(peerId);
  $('#call').hidden = true;
  $('#join-form').hidden = false;
});
for (const [button, kind, on, off] of [[$('#mute-audio'), 'audio', 'Unmute mic', 'Mute mic'],
                                        [$('#mute-video'), 'video', 'Start camera', 'Stop camera']]) {
  button.addEventListener('click', async () => {
    const muted = button.getAttribute('aria-pressed') !== 'true';
    button.setAttribute('aria-pressed', String(muted));
    button.textContent = muted ? on : off;
    await client.setMuted(kind, muted);
  });
}
$('#chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('#chat-input').value.trim();
  if (text && client.sendChat(text)) {
    addMessage('you', text);
    $('#chat-input').value = '';
  }
});
if (params.has('autojoin')) $('#join-form').requestSubmit();
