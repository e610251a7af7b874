// ghostless browser client: mediasoup-client + protoo, with the browser half
// of the liveness story (heartbeats, visibility, pagehide beacons, resume,
// multi-tab handover).  See docs/client.md.

import { Device } from 'mediasoup-client';
import { Protoo, ProtooError } from './protoo.js';

export { Protoo, ProtooError };

// Close codes after which reconnecting would not help (docs/protocol.md).
// 4503 (server or waiting queue full) is not one: it means "try later".
const FINAL_CODES = new Set([4400, 4401, 4403, 4409]);
const SERVER_FULL = 4503;
// Several nodes (docs/scaling.md): another node holds the room (4421: the load
// balancer will find it), or the room cannot be registered now (4504).  Both
// mean "try again shortly", with the same backoff.
const ROOM_ELSEWHERE = 4421;
const DIRECTORY_UNAVAILABLE = 4504;
const RETRY_LATER = new Map([
  [SERVER_FULL, 'server_full'],
  [ROOM_ELSEWHERE, 'room_elsewhere'],
  [DIRECTORY_UNAVAILABLE, 'directory_unavailable'],
]);
const QUEUE_TIMEOUT = 'queue_timeout'; // the reason of close code 4408 after waiting too long
const INTERACTION_THROTTLE_MS = 30000;
// mediasoup-client >= 3.19 no longer exposes device.sctpCapabilities; the
// server (as mediasoup-demo's) enables SCTP when a transport request has them.
const SCTP_CAPABILITIES = { numStreams: { OS: 1024, MIS: 1024 } };

const QUALITIES = ['good', 'unstable', 'poor'];
// What mediasoup-demo sends its webcam as: three simulcast encodings (rid r0,
// r1, r2 at 1/4, 1/2 and full resolution), each with three temporal layers.
const WEBCAM_SIMULCAST_ENCODINGS = [
  { scaleResolutionDownBy: 4, maxBitrate: 500000, scalabilityMode: 'L1T3' },
  { scaleResolutionDownBy: 2, maxBitrate: 1000000, scalabilityMode: 'L1T3' },
  { scaleResolutionDownBy: 1, maxBitrate: 5000000, scalabilityMode: 'L1T3' },
];
// Preferred receive qualities a page may ask for: spatial layer 0, 1 or 2.
export const LAYERS = { low: 0, medium: 1, high: 2 };

// -- Keeping the call alive across network changes (docs/client.md) --------------
//
// A new address (Wi-Fi to mobile, a DHCP renewal, a VPN coming up) strands
// both the WebSocket and the ICE candidate pair: they stay bound to an address
// the host no longer has, so nothing they send leaves and nothing sent to them
// arrives, with no FIN, no RST and often no offline/online event.  TCP takes
// minutes to give up; Chrome calls the transports 'disconnected' only ~5 s
// later (its checks unanswered for 5 s), 'failed' ~15 s after that, and never
// gathers candidates on the new address without an ICE restart (which it
// answers once its own network-change notifier has seen the address, 2-4 s
// after the change on Linux).  So the client watches for itself:
//
// 1. Path watch: every WATCH_INTERVAL_MS, while joined, each transport's
//    selected candidate pair tells (getStats) how long ago it last received a
//    packet, how many it received, and how many of its ICE checks went
//    unanswered.  It is suspect when
//    - it was busy (at least BUSY_PACKETS in the last interval, the last one
//      under BUSY_GAP_MS ago: media or its feedback, more than consent checks
//      and RTCP reports) and then hears nothing for STALL_MS: the senders
//      stopped (a peer muted or left), or the network under us changed; or
//    - its last UNANSWERED_CHECKS ICE checks got no answer (Chrome checks
//      every 2.5 s, faster once one is lost), busy or idle.
//    Each is reported once, until the path is heard again.  (A pair's first
//    sample judges "busy" on its count so far: at worst one needless probe.)
// 2. A suspect path, or a transport going 'disconnected' or 'failed'
//    (Chrome's own, later verdicts), probes the WebSocket: a `ping` with a
//    short deadline (PROBE_TIMEOUT_MS, or 4 round trips if longer).  A
//    socket that answers nothing by then is dropped, and the usual
//    reconnect/resume path takes over at once: the same session, over a new
//    socket bound to the current address.  A live socket leaves a suspect
//    path alone (the senders merely stopped; if ICE is broken too,
//    'disconnected' follows); a transport still 'disconnected' after
//    DISCONNECTED_GRACE_MS (Chrome often recovers by itself within a second),
//    or 'failed', gets its ICE restarted over it, and again after
//    ICE_RETRY_MS (doubling up to ICE_RETRY_MAX_MS) while it stays so.
// 3. Any request (the heartbeat included) that times out with nothing at all
//    received since it was sent means the same: the socket is dropped.
// 4. After every resume, ICE is restarted on every transport that ever
//    connected.  A resume means the socket broke, and the usual reason is a
//    network change that stranded the ICE pair too, while Chrome still says
//    'connected' for seconds; a restart on a healthy path costs one request
//    and a few STUN checks (media keeps flowing on the old pair until the new
//    one is nominated), far less than waiting 15 s for 'failed'.
const WATCH_INTERVAL_MS = 500;
const BUSY_PACKETS = 5; // per WATCH_INTERVAL_MS: 10 packets/s
const BUSY_GAP_MS = 400;
const STALL_MS = 1000;
const UNANSWERED_CHECKS = 2;
const PROBE_TIMEOUT_MS = 1000;
const PROBE_TIMEOUT_MAX_MS = 3000;
const DISCONNECTED_GRACE_MS = 1000;
const ICE_RETRY_MS = 2000;
const ICE_RETRY_MAX_MS = 30000;

function newPeerEntry(peer) {
  return { ...peer, status: 'connected', reason: null, quality: 'good', qualityReasons: [] };
}

function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * What the transport's selected candidate pair received: `{pairId, silence,
 * packets, unanswered}`, silence being how long ago (ms, by the stats' own
 * clock) the last packet came and unanswered how many of its ICE checks got no
 * response so far (null if not said); null when the browser does not say.
 */
async function lastHeard(transport) {
  let stats;
  try {
    stats = await transport.getStats();
  } catch {
    return null;
  }
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) { // no transport entry (Firefox): the nominated pair
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  if (!pair || typeof pair.lastPacketReceivedTimestamp !== 'number' || !pair.timestamp) return null;
  // No packet count (older browsers): bytes, at about 100 per feedback packet.
  const packets = typeof pair.packetsReceived === 'number' ? pair.packetsReceived
    : typeof pair.bytesReceived === 'number' ? pair.bytesReceived / 100 : null;
  const unanswered = typeof pair.requestsSent === 'number' && typeof pair.responsesReceived === 'number'
    ? pair.requestsSent - pair.responsesReceived : null;
  return { pairId: pair.id, silence: pair.timestamp - pair.lastPacketReceivedTimestamp, packets, unanswered };
}

function defaultServer() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}`;
}

/**
 * One participant in one room.
 *
 * Events (CustomEvent, details in docs/client.md): statechange, peers, queue,
 * quality, track, trackended, chat, replaced, error.
 * States: idle, connecting, queued, joined, reconnecting, replaced, closed.
 */
export class GhostlessClient extends EventTarget {
  constructor({
    server = defaultServer(),
    roomId,
    peerId = randomId('p-'),
    userId,
    displayName = 'guest',
    audio = true,
    video = true,
    chat = true,
    simulcast = true,
    // mediasoup-demo's default ('hd'): Chrome sends three simulcast layers only
    // from about 960x540 up (libwebrtc limits the layer count by resolution;
    // 640x480 gets two).
    videoConstraints = { width: { ideal: 1280 }, height: { ideal: 720 } },
    confirmLeave = false,
    reconnect = { baseMs: 500, maxMs: 8000 },
  } = {}) {
    super();
    if (!roomId) throw new Error('roomId is required');
    this.server = server.replace(/\/$/, '');
    this.roomId = roomId;
    this.peerId = peerId;
    this.userId = userId;
    this.displayName = displayName;
    this.wantAudio = audio;
    this.wantVideo = video;
    this.wantChat = chat;
    this.simulcast = simulcast;
    this.videoConstraints = videoConstraints;
    this.activeSpeaker = null; // the peerId the server says is speaking, or null
    this.confirmLeave = confirmLeave;
    this.reconnectPolicy = reconnect;
    this.state = 'idle';
    this.closeReason = null;
    this.peers = new Map();
    this.localStream = null;
    this.heartbeatInterval = 30;
    this.rtt = null;
    this.queue = null; // {position, length} while waiting in the server's queue
    this.quality = 'good'; // this participant's connection, as the server grades it
    this.qualityReasons = [];
    this._protoo = null;
    this._device = null;
    this._sendTransport = null;
    this._recvTransport = null;
    this._producers = new Map(); // kind -> producer
    this._consumers = new Map(); // id -> {consumer, peerId}
    this._dataProducer = null;
    this._resumeToken = null;
    this._leaveToken = null;
    this._heartbeat = null;
    this._reconnectTimer = null;
    this._reconnecting = false; // one attempt at a time: a resume token is single-use
    this._reconnectNow = false; // the socket closing now was dropped as dead
    this._attempt = 0;
    this._lastInteraction = 0;
    this._watchTimer = null; // the media path watch, while joined
    this._sampling = false; // a watch tick is reading stats
    this._paths = new Map(); // transport -> what the watch and ICE recovery know of it
    this._probing = null; // the WebSocket probe in flight (a promise of "alive?")
    this._listeners = [];
    this._installPageHooks();
  }

  // -- public API ---------------------------------------------------------------

  /** Take camera/microphone and join the room (again, after a `closed` state). */
  async start() {
    this._setState('connecting');
    await this._acquireMedia();
    try {
      await this._connect();
    } catch (error) {
      // Lost or refused for now (4503): the reconnect loop has taken over.
      if (this.state === 'reconnecting') return;
      throw error;
    }
  }

  /** Leave for good: beforeDisconnect, release everything, close 1000. */
  async leave() {
    if (this.state === 'closed') return;
    this._setState('closed', 'left');
    clearTimeout(this._reconnectTimer);
    if (this._protoo) {
      this._protoo.notify('beforeDisconnect', { reason: 'leave' });
      this._protoo.close(1000, 'leave');
    }
    this._closeMedia();
    this._stopLocalMedia();
    this._removePageHooks();
  }

  /** After `replaced`: take the session back into this tab ("Use here"). */
  async takeBack() {
    this._setState('connecting');
    this._resumeToken = null;
    await this._acquireMedia();
    await this._connect();
  }

  async setMuted(kind, muted) {
    const producer = this._producers.get(kind);
    if (!producer) return;
    if (muted) producer.pause(); else producer.resume();
    try {
      await this._protoo.request(muted ? 'pauseProducer' : 'resumeProducer', { producerId: producer.id });
    } catch (error) {
      this._emit('error', { error });
    }
  }

  sendChat(text) {
    if (this._dataProducer && this._dataProducer.readyState === 'open') {
      this._dataProducer.send(JSON.stringify({ peerId: this.peerId, displayName: this.displayName, text }));
      return true;
    }
    return false;
  }

  // -- connecting, joining, resuming ----------------------------------------------

  _url(resume) {
    const params = new URLSearchParams({ roomId: this.roomId, peerId: this.peerId, displayName: this.displayName });
    if (this.userId) params.set('userId', this.userId);
    if (resume && this._resumeToken) params.set('resumeToken', this._resumeToken);
    return `${this.server}/?${params}`;
  }

  async _connect() {
    const resume = Boolean(this._resumeToken);
    const protoo = new Protoo(this._url(resume));
    const firstNotice = new Promise((resolve) => { protoo._first = resolve; });
    protoo.onrequest = (method, data) => this._onRequest(method, data);
    protoo.onnotification = (method, data) => {
      if (protoo._first && ['sessionResumed', 'sessionExpired', 'queuePosition'].includes(method)) {
        protoo._first({ method, data });
        protoo._first = null;
      }
      this._onNotification(protoo, method, data);
    };
    protoo.onclose = (code, reason) => this._onClose(protoo, code, reason);
    protoo.onunresponsive = () => this._dropSocket(protoo, 'unresponsive');
    this._protoo = protoo;
    await protoo.open();
    if (resume) {
      const notice = await Promise.race([
        firstNotice,
        new Promise((resolve) => setTimeout(() => resolve({ method: 'timeout' }), 5000)),
      ]);
      if (notice.method === 'sessionResumed') {
        this._attempt = 0;
        this._resumeToken = notice.data.resumeToken;
        this._startHeartbeat(notice.data.heartbeatInterval || this.heartbeatInterval);
        this._setState('joined');
        // Not awaited: a socket lost again meanwhile must not hold up the
        // reconnect loop (the next resume restarts ICE anyway).
        this._restartAllIce();
        return;
      }
      // The grace period is over (or we were queued, so our seat is gone):
      // join as a fresh session, once admitted.
    }
    await this._join(protoo);
  }

  /**
   * A request of the join sequence.  A full room or server may put this
   * connection in the queue (`queuePosition` arrives first): then nothing but
   * `ping` is served until `queueAdmitted`, so wait for it; a request that
   * crossed the `queuePosition` on the wire gets 503 "queued" and is sent
   * again once admitted.
   */
  async _request(protoo, method, data) {
    for (;;) {
      if (protoo.admission) await protoo.admission.promise;
      try {
        return await protoo.request(method, data);
      } catch (error) {
        const queued = error instanceof ProtooError && error.code === 503 && error.reason === 'queued';
        if (!queued || protoo.admitted) throw error;
        this._queued(protoo);
      }
    }
  }

  /** This connection waits in the queue: `admission` settles when it gets a seat. */
  _queued(protoo) {
    if (protoo.admission || protoo.admitted || protoo.closed) return;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => {}); // a close while queued is handled by _onClose
    protoo.admission = { promise, resolve, reject };
    this._setState('queued');
    // Keep the waiting socket warm through proxies with idle timeouts.
    this._startHeartbeat(this.heartbeatInterval);
  }

  _admitted(protoo) {
    protoo.admitted = true;
    if (protoo.admission) protoo.admission.resolve();
    protoo.admission = null;
  }

  async _join(protoo) {
    this._closeMedia();
    if (!this._device) {
      const routerRtpCapabilities = await this._request(protoo, 'getRouterRtpCapabilities');
      const device = new Device();
      await device.load({ routerRtpCapabilities });
      this._device = device;
    }
    const device = this._device;
    this._sendTransport = await this._createTransport(protoo, 'send');
    this._recvTransport = await this._createTransport(protoo, 'recv');
    const joined = await this._request(protoo, 'join', {
      displayName: this.displayName,
      device: { flag: 'ghostless', name: navigator.userAgent.slice(0, 64) },
      rtpCapabilities: device.rtpCapabilities,
      sctpCapabilities: this.wantChat ? this._sctpCapabilities() : undefined,
    });
    this._resumeToken = joined.resumeToken;
    this._leaveToken = joined.leaveToken;
    this.peers.clear();
    for (const peer of joined.peers) this.peers.set(peer.id, newPeerEntry(peer));
    // A fresh session starts graded "good" (the server only reports changes).
    this.quality = 'good';
    this.qualityReasons = [];
    this._emit('peers', { peers: this.peers });
    this._attempt = 0;
    this._startHeartbeat(joined.heartbeatInterval || this.heartbeatInterval);
    this._setState('joined');
    // Video first: Chrome probes its bandwidth once, when the transport comes
    // up (on the first produce), and only a video sender can carry the probes;
    // the server reports them (transport-cc), so the top layer comes in seconds.
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    tracks.sort((a, b) => (a.kind === 'video' ? 0 : 1) - (b.kind === 'video' ? 0 : 1));
    for (const track of tracks) {
      if (device.canProduce(track.kind)) {
        const options = { track, stopTracks: false };
        if (track.kind === 'video' && this.simulcast) {
          options.encodings = WEBCAM_SIMULCAST_ENCODINGS.map((encoding) => ({ ...encoding }));
          options.codecOptions = { videoGoogleStartBitrate: 1000 };
        }
        const producer = await this._sendTransport.produce(options);
        this._producers.set(track.kind, producer);
      }
    }
    if (this.wantChat) {
      this._dataProducer = await this._sendTransport.produceData({ label: 'chat', ordered: true });
    }
  }

  async _createTransport(protoo, direction) {
    const info = await this._request(protoo, 'createWebRtcTransport', {
      producing: direction === 'send',
      consuming: direction === 'recv',
      sctpCapabilities: this.wantChat ? this._sctpCapabilities() : undefined,
    });
    const options = {
      id: info.id,
      iceParameters: info.iceParameters,
      iceCandidates: info.iceCandidates,
      dtlsParameters: info.dtlsParameters,
      sctpParameters: info.sctpParameters,
      iceServers: [],
    };
    const transport = direction === 'send'
      ? this._device.createSendTransport(options)
      : this._device.createRecvTransport(options);
    transport.on('connect', ({ dtlsParameters }, callback, errback) => {
      this._protoo.request('connectWebRtcTransport', { transportId: transport.id, dtlsParameters })
        .then(callback).catch(errback);
    });
    if (direction === 'send') {
      transport.on('produce', ({ kind, rtpParameters, appData }, callback, errback) => {
        this._protoo.request('produce', { transportId: transport.id, kind, rtpParameters, appData })
          .then(({ id }) => callback({ id })).catch(errback);
      });
      transport.on('producedata', ({ sctpStreamParameters, label, protocol, appData }, callback, errback) => {
        this._protoo.request('produceData', { transportId: transport.id, sctpStreamParameters, label, protocol, appData })
          .then(({ id }) => callback({ id })).catch(errback);
      });
    }
    transport.on('connectionstatechange', (state) => this._onTransportState(transport, state));
    return transport;
  }

  _sctpCapabilities() {
    return this._device.sctpCapabilities || SCTP_CAPABILITIES;
  }

  // -- keeping the media path alive (see the comment at the top) -----------------------

  _path(transport) {
    let path = this._paths.get(transport);
    if (!path) {
      path = {
        pairId: null, packets: null, busy: false, // the watch: media flow
        lost: null, checksLost: false, // the watch: ICE checks
        timer: null, retryMs: ICE_RETRY_MS, restarting: false, // ICE recovery
      };
      this._paths.set(transport, path);
    }
    return path;
  }

  _forgetPaths() {
    for (const path of this._paths.values()) clearTimeout(path.timer);
    this._paths.clear();
  }

  _startWatch() {
    if (this._watchTimer === null) {
      this._watchTimer = setInterval(() => this._watchPaths(), WATCH_INTERVAL_MS);
    }
  }

  _stopWatch() {
    clearInterval(this._watchTimer);
    this._watchTimer = null;
    // Pending ICE retries go too: a resume restarts ICE on every transport.
    this._forgetPaths();
  }

  async _watchPaths() {
    if (this._sampling) return; // the last tick's getStats is still running
    this._sampling = true;
    try {
      for (const transport of [this._sendTransport, this._recvTransport]) {
        if (!transport || transport.closed) continue;
        const heard = await lastHeard(transport);
        if (heard === null || this.state !== 'joined' || transport.closed) continue;
        if (this._suspect(this._path(transport), heard)) this._probe();
      }
    } finally {
      this._sampling = false;
    }
  }

  /** One watch sample of a transport's path: is it suspect (now, for the first time)? */
  _suspect(path, heard) {
    const samePair = path.pairId === heard.pairId;
    const received = samePair && path.packets !== null && heard.packets !== null
      ? heard.packets - path.packets : null;
    path.pairId = heard.pairId;
    path.packets = heard.packets;
    let suspect = false;
    if (heard.silence < BUSY_GAP_MS) {
      // Heard just now: busy if many came since the last sample (or, on a
      // pair's first sample, if it has heard a fair number already).
      path.busy = received !== null ? received >= BUSY_PACKETS
        : heard.packets !== null && heard.packets >= 2 * BUSY_PACKETS;
    } else if (path.busy && heard.silence >= STALL_MS) {
      path.busy = false; // once per stall: busy again once packets flow
      suspect = true;
    }
    // Checks never answered since the pair was first seen (the fewest
    // outstanding at any sample is the baseline: early losses, in flight).
    if (heard.unanswered !== null) {
      path.lost = samePair && path.lost !== null ? Math.min(path.lost, heard.unanswered) : heard.unanswered;
      const lost = heard.unanswered - path.lost >= UNANSWERED_CHECKS;
      if (lost && !path.checksLost) suspect = true;
      path.checksLost = lost;
    }
    return suspect;
  }

  _onTransportState(transport, state) {
    if (state === 'connected' || state === 'closed') {
      const path = this._paths.get(transport);
      if (path) {
        clearTimeout(path.timer);
        path.timer = null;
        path.retryMs = ICE_RETRY_MS;
      }
      return;
    }
    // Not joined: reconnecting (the resume restarts ICE), or done.
    if (this.state !== 'joined' || transport.closed) return;
    const path = this._path(transport);
    if (state === 'failed') {
      this._recoverIce(transport);
    } else if (state === 'disconnected' && path.timer === null) {
      this._probe(); // a dead socket goes at once; ICE gets its grace
      path.timer = setTimeout(() => this._recoverIce(transport), DISCONNECTED_GRACE_MS);
    }
  }

  /** A transport is disconnected or failed: restart its ICE over a live socket,
   *  or drop a dead socket (the resume restarts ICE). */
  async _recoverIce(transport) {
    const path = this._path(transport);
    clearTimeout(path.timer);
    path.timer = null;
    const broken = () => this.state === 'joined' && !transport.closed
      && ['disconnected', 'failed'].includes(transport.connectionState);
    if (!broken()) return;
    if (!(await this._probe()) || !broken() || this._paths.get(transport) !== path) return;
    await this._restartIce(transport);
    // Still broken by then (no path to the server yet?): again, backing off.
    if (this._paths.get(transport) === path && path.timer === null && !transport.closed) {
      path.timer = setTimeout(() => this._recoverIce(transport), path.retryMs);
      path.retryMs = Math.min(ICE_RETRY_MAX_MS, path.retryMs * 2);
    }
  }

  /**
   * Is the WebSocket alive?  One `ping` with a short deadline (one probe at a
   * time; callers share it).  Unanswered, with nothing else received meanwhile,
   * the socket is dropped (onunresponsive) and the answer is false.
   */
  _probe() {
    if (this._probing === null) {
      this._probing = this._probeOnce().finally(() => { this._probing = null; });
    }
    return this._probing;
  }

  async _probeOnce() {
    const protoo = this._protoo;
    if (!protoo || protoo.closed) return false;
    const timeout = Math.min(PROBE_TIMEOUT_MAX_MS, Math.max(PROBE_TIMEOUT_MS, 4 * (this.rtt || 0)));
    try {
      await protoo.request('ping', {}, timeout);
    } catch {
      // An error answer is an answer; a timeout with other traffic received is
      // a slow server, not a dead socket (the protoo peer dropped a dead one).
    }
    return protoo === this._protoo && !protoo.closed;
  }

  /** The socket is dead without knowing it: close it (4000: a loss, not a
   *  leave) and reconnect at once, resuming the session. */
  _dropSocket(protoo, reason) {
    if (protoo !== this._protoo || protoo.closed) return;
    if (['closed', 'replaced'].includes(this.state)) return;
    this._reconnectNow = true;
    protoo.close(4000, reason);
  }

  _restartAllIce() {
    for (const transport of [this._sendTransport, this._recvTransport]) {
      // A transport that never connected has nothing to restart.
      if (transport && !transport.closed && transport.connectionState !== 'new') {
        this._restartIce(transport);
      }
    }
  }

  async _restartIce(transport) {
    const path = this._path(transport);
    if (path.restarting) return; // one at a time per transport
    const protoo = this._protoo;
    if (!protoo) return;
    path.restarting = true;
    try {
      const iceParameters = await protoo.request('restartIce', { transportId: transport.id });
      if (!transport.closed) await transport.restartIce({ iceParameters });
    } catch (error) {
      // A socket lost meanwhile is no error of its own: the resume restarts ICE.
      if (protoo === this._protoo && !protoo.closed && !transport.closed) this._emit('error', { error });
    } finally {
      path.restarting = false;
    }
  }

  // -- server requests and notifications ---------------------------------------------

  async _onRequest(method, data) {
    if (method === 'newConsumer') {
      const consumer = await this._recvTransport.consume({
        id: data.id, producerId: data.producerId, kind: data.kind, rtpParameters: data.rtpParameters,
        // One stream per peer (as mediasoup-demo names it): its audio and video play in sync.
        streamId: `${data.peerId}-mic-webcam`,
      });
      this._consumers.set(consumer.id, { consumer, peerId: data.peerId });
      this._emit('track', { peerId: data.peerId, consumerId: consumer.id, kind: consumer.kind,
                           track: consumer.track, paused: data.producerPaused });
      return {};
    }
    if (method === 'newDataConsumer') {
      const dataConsumer = await this._recvTransport.consumeData({
        id: data.id, dataProducerId: data.dataProducerId, sctpStreamParameters: data.sctpStreamParameters,
        label: data.label, protocol: data.protocol,
      });
      dataConsumer.on('message', (message) => {
        let parsed;
        try { parsed = JSON.parse(message); } catch { parsed = { text: String(message) }; }
        this._emit('chat', { peerId: data.peerId, displayName: parsed.displayName, text: parsed.text });
      });
      return {};
    }
    throw new Error(`unknown request ${method}`);
  }

  _onNotification(protoo, method, data) {
    switch (method) {
      case 'newPeer':
        this.peers.set(data.id, newPeerEntry(data));
        this._emit('peers', { peers: this.peers });
        break;
      case 'peerClosed':
        this._updatePeer(data.peerId, { status: 'left', reason: data.reason || 'left' });
        for (const [id, entry] of this._consumers) {
          if (entry.peerId === data.peerId) this._dropConsumer(id);
        }
        break;
      case 'peerReconnecting':
        this._updatePeer(data.peerId, { status: 'reconnecting' });
        break;
      case 'peerResumed':
        this._updatePeer(data.peerId, { status: 'connected', reason: null });
        break;
      case 'peerDisplayNameChanged':
        this._updatePeer(data.peerId, { displayName: data.displayName });
        break;
      case 'consumerClosed':
        this._dropConsumer(data.consumerId);
        break;
      case 'consumerPaused':
      case 'consumerResumed':
        this._emit(method, { consumerId: data.consumerId });
        break;
      case 'consumerLayersChanged': {
        const entry = this._consumers.get(data.consumerId);
        if (!entry) break;
        entry.layers = data.spatialLayer === null || data.spatialLayer === undefined
          ? null : { spatialLayer: data.spatialLayer, temporalLayer: data.temporalLayer };
        this._emit('layers', { consumerId: data.consumerId, peerId: entry.peerId, layers: entry.layers });
        break;
      }
      case 'activeSpeaker':
        this.activeSpeaker = data.peerId || null;
        this._emit('speaker', { peerId: this.activeSpeaker, volume: data.volume });
        break;
      case 'pong':
        break;
      case 'queuePosition':
        if (protoo !== this._protoo) break;
        this._queued(protoo);
        this.queue = { position: data.position, length: data.length };
        this._attempt = 0; // the server took us: a later loss starts backing off afresh
        this._emit('queue', { position: data.position, length: data.length, admitted: false });
        break;
      case 'queueAdmitted':
        if (protoo !== this._protoo) break;
        this.queue = null;
        this._admitted(protoo);
        this._setState('connecting');
        this._emit('queue', { position: 0, length: 0, admitted: true, waited: data.waited });
        break;
      case 'peerQuality':
        this._setQuality(data);
        break;
      case 'sessionReplaced':
        this._replaced(protoo);
        break;
      case 'serverShutdown':
        this._serverShutdown(protoo, data.reconnectDelay || 2000);
        break;
      default:
        break;
    }
  }

  _setQuality({ peerId, quality, reasons }) {
    if (!QUALITIES.includes(quality)) return; // a grade this client does not know
    const qualityReasons = Array.isArray(reasons) ? reasons.map(String) : [];
    if (peerId === this.peerId) {
      this.quality = quality;
      this.qualityReasons = qualityReasons;
      this._emit('peers', { peers: this.peers });
    } else {
      this._updatePeer(peerId, { quality, qualityReasons });
    }
    if (peerId === this.peerId || this.peers.has(peerId)) {
      this._emit('quality', { peerId, quality, reasons: qualityReasons, self: peerId === this.peerId });
    }
  }

  _updatePeer(peerId, changes) {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    Object.assign(peer, changes);
    this._emit('peers', { peers: this.peers });
  }

  /**
   * Ask for a lower (or higher) quality of a peer's video: ``layer`` is a
   * spatial layer (LAYERS.low/medium/high) or null for the best that fits.
   */
  async setPreferredQuality(peerId, layer) {
    const spatialLayer = layer === null || layer === undefined ? 2 : layer;
    for (const [consumerId, entry] of this._consumers) {
      if (entry.peerId !== peerId || entry.consumer.kind !== 'video') continue;
      await this._protoo.request('setConsumerPreferredLayers', {
        consumerId, spatialLayer, temporalLayer: 2,
      });
    }
  }

  _dropConsumer(consumerId) {
    const entry = this._consumers.get(consumerId);
    if (!entry) return;
    this._consumers.delete(consumerId);
    entry.consumer.close();
    this._emit('trackended', { consumerId, peerId: entry.peerId });
  }

  // -- losing the connection ------------------------------------------------------------

  _onClose(protoo, code, reason) {
    // A join waiting for its seat gives up with the connection, current or not.
    if (protoo.admission) protoo.admission.reject(new Error('connection closed'));
    protoo.admission = null;
    if (protoo !== this._protoo) return; // an older connection
    this._stopHeartbeat();
    this.queue = null;
    if (['closed', 'replaced'].includes(this.state)) return;
    if (FINAL_CODES.has(code) || (code === 4408 && reason === QUEUE_TIMEOUT)) {
      // Refused, or waited in the queue for as long as the server allows:
      // coming straight back would not help.  start() tries again.
      this._closeMedia();
      this._stopLocalMedia();
      this._setState('closed', reason || String(code));
      return;
    }
    // The session is gone (timed out, closed, or its room moved to another node).
    if (code === 4408 || code === 4411 || code === ROOM_ELSEWHERE) this._resumeToken = null;
    // Server full, room on another node, directory away: try later, backing off
    // further each time.
    this._setState('reconnecting', RETRY_LATER.get(code) || null);
    // A socket we dropped as dead (_dropSocket): the network works (the browser
    // says online), only that socket does not, so the first attempt goes at
    // once; later ones back off as usual.
    const now = this._reconnectNow && this._attempt === 0;
    this._reconnectNow = false;
    this._scheduleReconnect(now ? 0 : undefined);
  }

  _scheduleReconnect(delayMs) {
    if (this._reconnecting) return; // the attempt in flight reschedules if it fails
    clearTimeout(this._reconnectTimer);
    const { baseMs, maxMs } = this.reconnectPolicy;
    // Exponential backoff with full jitter.
    const ceiling = Math.min(maxMs, baseMs * 2 ** this._attempt);
    const wait = delayMs !== undefined ? delayMs : Math.random() * ceiling;
    this._attempt += 1;
    this._reconnectTimer = setTimeout(() => this._reconnect(), wait);
  }

  async _reconnect() {
    if (this.state !== 'reconnecting' || this._reconnecting) return;
    if (navigator.onLine === false) {
      // No network: the 'online' event brings us back; check again later anyway.
      this._scheduleReconnect(this.reconnectPolicy.maxMs);
      return;
    }
    this._reconnecting = true;
    try {
      await this._connect();
    } catch (error) {
      // retried below
    } finally {
      this._reconnecting = false;
    }
    // Failed, or connected and lost again meanwhile: try again.
    if (this.state === 'reconnecting') this._scheduleReconnect();
  }

  _replaced(protoo) {
    // Another tab took the call over: release the camera at once.
    this._setState('replaced', 'another connection took over');
    this._stopHeartbeat();
    this._closeMedia();
    this._stopLocalMedia();
    this._emit('replaced', {});
  }

  _serverShutdown(protoo, delayMs) {
    this._resumeToken = null;
    this._setState('reconnecting', 'server restart');
    this._protoo = null;
    this._attempt = 0;
    this._scheduleReconnect(delayMs);
  }

  // -- heartbeat and activity -------------------------------------------------------------

  _startHeartbeat(seconds) {
    this.heartbeatInterval = seconds;
    this._stopHeartbeat();
    this._heartbeat = setInterval(() => this._ping(), seconds * 1000);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  async _ping() {
    if (!this._protoo || (this.state !== 'joined' && this.state !== 'queued')) return;
    const started = performance.now();
    try {
      await this._protoo.request('ping', this.rtt === null ? {} : { rtt: this.rtt }, 10000);
      this.rtt = Math.round((performance.now() - started) * 10) / 10;
    } catch {
      // Unanswered with nothing else heard: the protoo peer calls the socket
      // unresponsive and it is dropped (_dropSocket); a closed one, _onClose.
    }
  }

  _activity(data) {
    if (this._protoo && this.state === 'joined') this._protoo.notify('activity', data);
  }

  _installPageHooks() {
    const on = (target, event, handler, options) => {
      target.addEventListener(event, handler, options);
      this._listeners.push([target, event, handler, options]);
    };
    on(document, 'visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        this._ping();
        this._activity({ type: 'visibility', visibility: 'visible' });
        if (this.state === 'reconnecting') this._scheduleReconnect(0);
      } else {
        this._activity({ type: 'visibility', visibility: 'hidden' });
      }
    });
    const interaction = () => {
      const now = Date.now();
      if (now - this._lastInteraction > INTERACTION_THROTTLE_MS) {
        this._lastInteraction = now;
        this._activity({ type: 'interaction' });
      }
    };
    on(window, 'pointerdown', interaction, { passive: true });
    on(window, 'keydown', interaction, { passive: true });
    on(window, 'online', () => { if (this.state === 'reconnecting') this._scheduleReconnect(0); });
    on(window, 'offline', () => {
      // The network is gone: do not wait for TCP to notice.  Close code 4000
      // tells the server this is a loss (keep the session for the grace
      // period), not a leave.
      if (this.state === 'joined' && this._protoo) this._protoo.close(4000, 'offline');
    });
    on(window, 'pagehide', () => {
      if (this.state !== 'joined' && this.state !== 'reconnecting') return;
      if (this._protoo) this._protoo.notify('beforeDisconnect', { reason: 'pagehide' });
      if (this._leaveToken && navigator.sendBeacon) {
        const http = this.server.replace(/^ws/, 'http');
        navigator.sendBeacon(`${http}/leave?token=${encodeURIComponent(this._leaveToken)}`);
      }
    });
    on(window, 'beforeunload', (event) => {
      if (this.confirmLeave && this.state === 'joined') {
        event.preventDefault();
        event.returnValue = '';
      }
    });
  }

  _removePageHooks() {
    for (const [target, event, handler, options] of this._listeners) {
      target.removeEventListener(event, handler, options);
    }
    this._listeners = [];
  }

  // -- media --------------------------------------------------------------------------------

  async _acquireMedia() {
    if (this.localStream && this.localStream.getTracks().every((t) => t.readyState === 'live')) return;
    if (!this.wantAudio && !this.wantVideo) return;
    this.localStream = await navigator.mediaDevices.getUserMedia({
      audio: this.wantAudio,
      video: this.wantVideo ? this.videoConstraints : false,
    });
    this._emit('localstream', { stream: this.localStream });
  }

  _stopLocalMedia() {
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) track.stop();
    }
    this._emit('localstream', { stream: null });
  }

  _closeMedia() {
    for (const id of [...this._consumers.keys()]) this._dropConsumer(id);
    for (const transport of [this._sendTransport, this._recvTransport]) {
      if (transport && !transport.closed) transport.close();
    }
    this._sendTransport = this._recvTransport = null;
    this._forgetPaths();
    this._producers.clear();
    this._dataProducer = null;
  }

  _setState(state, reason = null) {
    if (this.state === state && reason === this.closeReason) return;
    this.state = state;
    this.closeReason = reason;
    // The media path watch (and ICE recovery) runs exactly while joined.
    if (state === 'joined') this._startWatch(); else this._stopWatch();
    this._emit('statechange', { state, reason });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
