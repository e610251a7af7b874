// A minimal protoo peer over one WebSocket (versatica/protoo wire format).
// Requests the server sends (newConsumer...) go to `onrequest`, notifications
// to `onnotification`; `onclose(code, reason)` fires once.
//
// `onunresponsive(method)` fires when a request timed out and nothing at all
// arrived on the socket since it was sent: the socket is most likely dead
// without knowing it (an address change strands it with no FIN or RST either
// way, and TCP takes minutes to give up).  The owner decides what to do (the
// client drops the socket and resumes over a new one).

export class ProtooError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

export class Protoo {
  constructor(url) {
    this.url = url;
    this.ws = null;
    this.pending = new Map();
    this.nextId = Math.floor(Math.random() * 1e7);
    this.onrequest = async () => { throw new Error('no request handler'); };
    this.onnotification = () => {};
    this.onclose = () => {};
    this.onunresponsive = () => {};
    this.closed = false;
    this.lastReceived = 0; // performance.now() of the last message received
  }

  open(timeout = 10000) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this.url, 'protoo');
      this.ws = ws;
      const timer = setTimeout(() => {
        if (!settled) { settled = true; ws.close(); reject(new Error('connect timeout')); }
      }, timeout);
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      };
      ws.onmessage = (event) => {
        this.lastReceived = performance.now();
        this._receive(event.data);
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!settled) { settled = true; reject(new Error(`connection closed (${event.code})`)); }
        this._closed(event.code, event.reason);
      };
    });
  }

  get open_() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  request(method, data = {}, timeout = 15000) {
    if (!this.open_) return Promise.reject(new Error('not connected'));
    const id = (this.nextId = (this.nextId % 2147483647) + 1);
    this.ws.send(JSON.stringify({ request: true, id, method, data }));
    const sent = performance.now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method} timed out`));
        if (!this.closed && this.lastReceived < sent) this.onunresponsive(method);
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  notify(method, data = {}) {
    if (this.open_) this.ws.send(JSON.stringify({ notification: true, method, data }));
  }

  close(code = 1000, reason = '') {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
    this._closed(code, reason);
  }

  async _receive(raw) {
    let message;
    try { message = JSON.parse(raw); } catch { return; }
    if (message.response) {
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      clearTimeout(waiter.timer);
      if (message.ok) waiter.resolve(message.data || {});
      else waiter.reject(new ProtooError(message.errorCode, message.errorReason));
    } else if (message.request) {
      let reply;
      try {
        const data = await this.onrequest(message.method, message.data || {});
        reply = { response: true, id: message.id, ok: true, data: data || {} };
      } catch (error) {
        reply = { response: true, id: message.id, ok: false, errorCode: 500,
                  errorReason: String(error && error.message || error) };
      }
      if (this.open_) this.ws.send(JSON.stringify(reply));
    } else if (message.notification) {
      this.onnotification(message.method, message.data || {});
    }
  }

  _closed(code, reason) {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error('connection closed'));
    }
    this.pending.clear();
    this.onclose(code, reason);
  }
}
