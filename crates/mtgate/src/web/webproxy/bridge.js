// mtgate's WEB proxy bridge (WEB proxy protocol v1). `TPROXY` (set above
// by the server) holds the bootstrap token, the origin, the base path, the
// carrier and the batch limit. The app speaks whole frames
// (type:u8 | stream:u24 | len:u32 | payload) through one of two
// boundaries; this page carries them to mtgate and back.
"use strict";
(function () {
  const HELLO = 0x10, OPEN = 0x01, CLOSE = 0x03;
  let toApp = null;      // function(Uint8Array | object)
  let session = null;    // session token
  let ws = null;
  const pending = [];    // frames from the app before the carrier is up
  let up = 0, down = 0;

  function status(state) { if (toApp) toApp({ t: "status", state: state }); }

  function frames(buf) {
    const out = [];
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let at = 0;
    while (at + 8 <= buf.byteLength) {
      const len = v.getUint32(at + 4);
      if (at + 8 + len > buf.byteLength) break;
      out.push(buf.subarray(at, at + 8 + len));
      at += 8 + len;
    }
    return out;
  }

  async function createSession(hello) {
    const r = await fetch(TPROXY.base + "api/v1/session", {
      method: "POST",
      headers: {
        "Authorization": "Bearer " + TPROXY.bootstrap,
        "Content-Type": "application/octet-stream",
      },
      body: hello,
      cache: "no-store",
      credentials: "omit",
    });
    if (r.status !== 200) throw new Error("session " + r.status);
    session = r.headers.get("X-Session-Token");
    const welcome = new Uint8Array(await r.arrayBuffer());
    return welcome;
  }

  function openWebSocket() {
    const url = "wss://" + location.host + TPROXY.base + "api/v1/ws";
    ws = new WebSocket(url, "tproxy-v1." + session);
    ws.binaryType = "arraybuffer";
    ws.onopen = function () {
      status("connected");
      while (pending.length) send(pending.shift());
    };
    ws.onmessage = function (e) {
      if (!(e.data instanceof ArrayBuffer)) return;
      const body = new Uint8Array(e.data);
      down += body.byteLength;
      for (const f of frames(body)) toApp(f);
    };
    ws.onclose = function () { status("closed"); if (toApp) toApp({ t: "close" }); };
  }

  // The https carriers: per lane (the session's one for `https`, one per
  // stream for `https-lanes`, lane 0 for session control) serialized
  // uplink bodies and one long poll down.
  function sleep(ms) { return new Promise(function (res) { setTimeout(res, ms); }); }
  function Lane(id) { return { id: id, pending: [], seq: 1, cursor: 0, sending: false, done: false, appClosed: false, relayClosed: false }; }
  const main = Lane(null);
  const lanes = new Map(); // stream id -> https lane, or websocket lane
  function closeFrame(id) { const f = new Uint8Array(8); f[0] = CLOSE; f[1] = id >> 16; f[2] = (id >> 8) & 255; f[3] = id & 255; return f; }
  function streamOf(f) { return (f[1] << 16) | (f[2] << 8) | f[3]; }

  // A lane the relay ended: the app learns of it unless a CLOSE already passed.
  function ended(lane) {
    if (lane.done) return;
    lane.done = true;
    if (lane.id === null) { status("closed"); if (toApp) toApp({ t: "close" }); return; }
    lanes.delete(lane.id);
    if (lane.id !== 0 && !lane.appClosed && !lane.relayClosed) toApp(closeFrame(lane.id));
  }

  function deliver(lane, body) {
    down += body.byteLength;
    for (const f of frames(body)) {
      if (f[0] === CLOSE && lane) lane.relayClosed = true;
      toApp(f);
    }
  }

  function headers(lane) {
    const h = { "Authorization": "Bearer " + session };
    if (lane.id !== null) h["X-Lane-ID"] = String(lane.id);
    return h;
  }

  async function upLoop(lane) {
    if (lane.sending) return;
    lane.sending = true;
    while (lane.pending.length && !lane.done) {
      let n = 0, parts = [];
      while (lane.pending.length && n < TPROXY.batch) { const f = lane.pending.shift(); parts.push(f); n += f.byteLength; }
      const body = new Uint8Array(n);
      let at = 0;
      for (const p of parts) { body.set(p, at); at += p.byteLength; }
      for (;;) {
        const h = headers(lane);
        h["Content-Type"] = "application/octet-stream";
        h["X-Up-Seq"] = String(lane.seq);
        let r;
        // A lost request is sent again byte for byte under the same seq.
        try {
          r = await fetch(TPROXY.base + "api/v1/up", { method: "POST", headers: h, body: body, cache: "no-store", credentials: "omit" });
        } catch (e) { await sleep(1000); continue; }
        if (r.status === 204) { lane.seq += 1; up += n; break; }
        if (r.status !== 503) { ended(lane); lane.sending = false; return; }
        await sleep(1000);
      }
    }
    lane.sending = false;
  }

  async function downLoop(lane) {
    while (!lane.done) {
      const h = headers(lane);
      h["X-Down-Cursor"] = String(lane.cursor);
      let r;
      try {
        r = await fetch(TPROXY.base + "api/v1/down", { method: "POST", headers: h, cache: "no-store", credentials: "omit" });
      } catch (e) { await sleep(1000); continue; }
      if (r.status === 200 || r.status === 204) {
        if (r.headers.get("X-Lane-Closed") === "1") { ended(lane); return; }
        const c = r.headers.get("X-Down-Cursor");
        if (c !== null) lane.cursor = Number(c);
        if (r.status === 200) deliver(lane.id === null ? null : lane, new Uint8Array(await r.arrayBuffer()));
      } else if (r.status === 503) {
        await sleep(1000);
      } else { ended(lane); return; }
    }
  }

  // The websocket-lanes carrier: a WebSocket per stream, its first
  // message beginning with OPEN; losing it closes that stream only.
  function laneSocket(id) {
    const lane = Lane(id);
    lane.ws = new WebSocket("wss://" + location.host + TPROXY.base + "api/v1/ws",
      "tproxy-lane-v1." + session + "." + id);
    lane.ws.binaryType = "arraybuffer";
    lane.ws.onopen = function () {
      while (lane.pending.length) { const f = lane.pending.shift(); up += f.byteLength; lane.ws.send(f); }
    };
    lane.ws.onmessage = function (e) {
      if (e.data instanceof ArrayBuffer) deliver(lane, new Uint8Array(e.data));
    };
    lane.ws.onclose = function () { ended(lane); };
    return lane;
  }

  function sendFrame(f) {
    const kind = f[0], id = streamOf(f);
    if (TPROXY.carrier === "https-lanes") {
      let lane = lanes.get(id);
      if (!lane) {
        if (kind !== OPEN && id !== 0) return; // a late frame of a closed lane
        lane = Lane(id);
        lanes.set(id, lane);
        if (id !== 0) downLoop(lane);
      }
      if (kind === CLOSE) lane.appClosed = true;
      lane.pending.push(f);
      upLoop(lane);
      return;
    }
    // websocket-lanes: no lane 0 (liveness is the WebSockets' own ping).
    if (id === 0) return;
    let lane = lanes.get(id);
    if (!lane) {
      if (kind !== OPEN) return;
      lane = laneSocket(id);
      lanes.set(id, lane);
    }
    if (kind === CLOSE) lane.appClosed = true;
    if (lane.ws.readyState === 1) { up += f.byteLength; lane.ws.send(f); }
    else lane.pending.push(f);
  }

  function send(data) {
    if (TPROXY.carrier === "https") { main.pending.push(data); upLoop(main); return; }
    if (TPROXY.carrier !== "websocket") { for (const f of frames(data)) sendFrame(f); return; }
    if (!ws || ws.readyState !== 1) { pending.push(data); return; }
    up += data.byteLength;
    ws.send(data);
  }

  async function fromApp(data) {
    if (!(data instanceof Uint8Array)) {
      if (data instanceof ArrayBuffer) data = new Uint8Array(data);
      else return; // a control message
    }
    if (session === null) {
      if (data[0] !== HELLO) return;
      const welcome = await createSession(data);
      toApp(welcome);
      if (TPROXY.carrier === "websocket") openWebSocket();
      else if (TPROXY.carrier === "https") { status("connected"); downLoop(main); }
      else status("connected");
      return;
    }
    send(data);
  }

  // Boundary 1: the app injected `TelegramWebProxy` (#android=<nonce>).
  const frag = location.hash.startsWith("#android=") ? location.hash.slice(9) : null;
  history.replaceState(null, "", TPROXY.base);
  if (frag !== null && window.TelegramWebProxy) {
    const app = window.TelegramWebProxy;
    toApp = function (m) {
      app.postMessage(m instanceof Uint8Array ? m : JSON.stringify(m));
    };
    app.onmessage = function (e) { fromApp(e.data !== undefined ? e.data : e); };
    app.postMessage(JSON.stringify({ t: "tproxy-android-init", v: 1, nonce: frag }));
    return;
  }
  // Boundary 2: a loopback parent page transfers a MessagePort.
  window.addEventListener("message", function (e) {
    if (!/^http:\/\/127\.0\.0\.1(:\d+)?$/.test(e.origin)) return;
    const m = e.data;
    if (!m || m.t !== "tproxy-init" || m.v !== 1 || !e.ports || !e.ports[0]) return;
    const port = e.ports[0];
    toApp = function (x) { port.postMessage(x); };
    port.onmessage = function (ev) { fromApp(ev.data); };
    setInterval(function () { toApp({ t: "traffic", up: up, down: down }); }, 1000);
    status("ready");
  });
})();
