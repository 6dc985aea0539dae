// mtgate's WEB proxy bridge (WEB proxy protocol v1). `TPROXY` (set above
// by the server) holds the bootstrap token, the origin, the base path, the
// carrier and the batch limit. The app speaks whole frames
// (type:u8 | stream:u24 | len:u32 | payload) through one of two
// boundaries; this page carries them to mtgate and back.
"use strict";
(function () {
  const HELLO = 0x10;
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

  // The https carrier: serialized uplink bodies, one long poll down.
  let seq = 1, cursor = 0, sending = false;
  function auth() { return { "Authorization": "Bearer " + session }; }

  async function upLoop() {
    if (sending) return;
    sending = true;
    while (pending.length) {
      let n = 0, parts = [];
      while (pending.length && n < TPROXY.batch) { const f = pending.shift(); parts.push(f); n += f.byteLength; }
      const body = new Uint8Array(n);
      let at = 0;
      for (const p of parts) { body.set(p, at); at += p.byteLength; }
      for (;;) {
        const h = auth();
        h["Content-Type"] = "application/octet-stream";
        h["X-Up-Seq"] = String(seq);
        const r = await fetch(TPROXY.base + "api/v1/up", { method: "POST", headers: h, body: body, cache: "no-store", credentials: "omit" });
        if (r.status === 204) { seq += 1; up += n; break; }
        if (r.status !== 503) { status("closed"); if (toApp) toApp({ t: "close" }); sending = false; return; }
        await new Promise(function (res) { setTimeout(res, 1000); });
      }
    }
    sending = false;
  }

  async function downLoop() {
    for (;;) {
      const h = auth();
      h["X-Down-Cursor"] = String(cursor);
      let r;
      try {
        r = await fetch(TPROXY.base + "api/v1/down", { method: "POST", headers: h, cache: "no-store", credentials: "omit" });
      } catch (e) { await new Promise(function (res) { setTimeout(res, 1000); }); continue; }
      if (r.status === 200 || r.status === 204) {
        const c = r.headers.get("X-Down-Cursor");
        if (c !== null) cursor = Number(c);
        if (r.status === 200) {
          const body = new Uint8Array(await r.arrayBuffer());
          down += body.byteLength;
          for (const f of frames(body)) toApp(f);
        }
      } else if (r.status === 503) {
        await new Promise(function (res) { setTimeout(res, 1000); });
      } else { status("closed"); if (toApp) toApp({ t: "close" }); return; }
    }
  }

  function send(frame) {
    if (TPROXY.carrier === "https") { pending.push(frame); upLoop(); return; }
    if (!ws || ws.readyState !== 1) { pending.push(frame); return; }
    up += frame.byteLength;
    ws.send(frame);
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
      else if (TPROXY.carrier === "https") { status("connected"); downLoop(); }
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
