// Long-poll (issue 14): the official phoenix.js client with `transport: LongPoll` against
// /socket/longpoll (join, push and reply, a broadcast made by a WebSocket client, leave), with
// sessions on both cores (requests that SO_REUSEPORT gives to the other core reach the session's
// core over the mesh); `longPollFallbackMs` behind a proxy that refuses WebSocket upgrades; and
// the session rules: expiry, a forged token, a batch over 100, the session cap.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { LongPoll } from "phoenix";
import {
  startServer,
  newSocket,
  connectSocket,
  joinOk,
  pushResult,
  collect,
  closeAll,
  httpRequest,
  metricsSnapshot,
  waitFor,
  sleep,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const sum = (m, name) => Object.values(m.series[name] || {}).reduce((a, b) => a + b, 0);

/** A plain HTTP request on its own connection; the JSON body parsed. */
async function lp(server, method, query, body, headers = {}) {
  const res = await httpRequest(server, method, `/socket/longpoll?${query}`, { body, headers });
  assert.equal(res.status, 200, `${method} ${query}: HTTP ${res.status} ${res.body}`);
  return JSON.parse(res.body);
}

describe("long-poll with phoenix.js", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];

  before(async () => {
    server = await startServer({ longpoll_window_ms: 2000 });
  });

  after(async () => {
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test("LongPoll sockets join, push, get a WebSocket client's broadcast and leave", async () => {
    // Six long-poll sockets: with two cores, sessions open on both and polls cross over.
    const polls = [];
    for (let i = 0; i < 6; i++) {
      const s = newSocket(server, { transport: LongPoll, timeout: 5000 }, sockets);
      await connectSocket(s, 5000);
      assert.equal(s.transport, LongPoll);
      const ch = s.channel("room:lp", { n: i });
      await joinOk(ch);
      polls.push({ s, ch, got: collect(ch, "shout").items });
    }
    const ws = newSocket(server, {}, sockets);
    await connectSocket(ws);
    const wch = ws.channel("room:lp", {});
    await joinOk(wch);
    const wgot = collect(wch, "shout").items;

    // A long-poll push is answered (ok) and broadcast to every member, WebSocket ones too.
    const r = await pushResult(polls[0].ch.push("shout", { from: "lp" }), 5000);
    assert.equal(r.status, "ok", JSON.stringify(r));
    // A WebSocket client's broadcast reaches every long-poll socket.
    assert.equal((await pushResult(wch.push("shout", { from: "ws" }))).status, "ok");
    for (const { got } of polls) {
      await waitFor(() => got.length >= 2, "both broadcasts on a long-poll socket", 5000);
      assert.deepEqual(got.map((m) => m.from).sort(), ["lp", "ws"]);
    }
    await waitFor(() => wgot.length >= 2, "both broadcasts on the WebSocket");

    const m = await metricsSnapshot(server);
    const opened = m.series.corecast_longpoll_opened_total || {};
    assert.ok(Object.keys(opened).length === 2, `metrics per core: ${JSON.stringify(opened)}`);
    assert.equal(sum(m, "corecast_longpoll_sessions"), 6);
    assert.ok(sum(m, "corecast_longpoll_forwarded_total") > 0, "some requests crossed cores");

    // Leave: the reply comes back, and the channel gauge drops.
    const before = sum(m, "corecast_channels");
    const left = await pushResult(polls[0].ch.leave(), 5000);
    assert.equal(left.status, "ok");
    await waitFor(
      async () => sum(await metricsSnapshot(server), "corecast_channels") === before - 1,
      "the left channel gone from the gauge",
    );
    // Disconnect: the session ends with the next expiry (no poll for 1.5 windows).
    for (const { s } of polls) s.disconnect();
    await waitFor(
      async () => sum(await metricsSnapshot(server), "corecast_longpoll_sessions") === 0,
      "the sessions expired",
      8000,
      200,
    );
    const end = await metricsSnapshot(server);
    assert.ok(sum(end, "corecast_longpoll_expired_total") >= 6);
  });

  test("a raw session: token, messages, window, forged tokens, batch bound", async () => {
    const open = await lp(server, "GET", "vsn=2.0.0");
    assert.equal(open.status, 410);
    assert.match(open.token, /^lp1\./);
    const t = encodeURIComponent(open.token);
    const nd = { "Content-Type": "application/x-ndjson" };
    const join = '["1","1","room:raw","phx_join",{}]';
    const push = '["1","2","room:raw","hello",{"a":1}]';
    assert.deepEqual(await lp(server, "POST", `vsn=2.0.0&token=${t}`, `${join}\n${push}`, nd), {
      status: 200,
    });
    const got = await lp(server, "GET", `vsn=2.0.0&token=${t}`);
    assert.equal(got.status, 200);
    assert.equal(got.token, open.token);
    const msgs = got.messages.map((m) => JSON.parse(m));
    assert.deepEqual(msgs[0], ["1", "1", "room:raw", "phx_reply", { response: {}, status: "ok" }]);
    assert.ok(msgs.some((m) => m[3] === "hello"), JSON.stringify(msgs));
    // Nothing queued: the poll waits out its window (2 s) and says 204.
    const t0 = Date.now();
    const empty = await lp(server, "GET", `vsn=2.0.0&token=${t}`);
    assert.equal(empty.status, 204);
    assert.ok(Date.now() - t0 >= 1500, `answered after ${Date.now() - t0} ms`);

    // A forged token (same slot, another secret) finds no session, and the real one goes on.
    const raw = Buffer.from(open.token.slice(4), "base64url");
    raw[raw.length - 1] ^= 1;
    const forged = encodeURIComponent("lp1." + raw.toString("base64url"));
    assert.deepEqual(await lp(server, "GET", `vsn=2.0.0&token=${forged}`), { status: 410 });
    assert.deepEqual(await lp(server, "POST", `vsn=2.0.0&token=${forged}`, push), { status: 410 });
    const core = Buffer.from(raw);
    core.writeUInt16BE(999, 0);
    const far = encodeURIComponent("lp1." + core.toString("base64url"));
    assert.deepEqual(await lp(server, "GET", `vsn=2.0.0&token=${far}`), { status: 410 });
    // 101 messages in one batch: refused whole (400), nothing handled, the session stays.
    const many = Array(101).fill(push).join("\n");
    const big = await lp(server, "POST", `vsn=2.0.0&token=${t}`, many, nd);
    assert.equal(big.status, 400);
    assert.deepEqual(await lp(server, "POST", `vsn=2.0.0&token=${t}`, push), { status: 200 });
    const after = await lp(server, "GET", `vsn=2.0.0&token=${t}`);
    assert.equal(after.status, 200);
    const hellos = after.messages.map((m) => JSON.parse(m)).filter((m) => m[3] === "hello");
    assert.equal(hellos.length, 1, "one push, not 101");

    // No poll for 1.5 windows: the session is gone (410), its channel left.
    await sleep(3500);
    assert.deepEqual(await lp(server, "POST", `vsn=2.0.0&token=${t}`, push), { status: 410 });
    // A new session works at once.
    assert.equal((await lp(server, "GET", "vsn=2.0.0")).status, 410);
    // The CORS preflight.
    const pre = await httpRequest(server, "OPTIONS", "/socket/longpoll", {
      headers: { Origin: "http://app.example", "Access-Control-Request-Method": "POST" },
    });
    assert.equal(pre.status, 200);
    assert.equal(pre.headers["access-control-allow-origin"], "*");
    assert.match(pre.headers["access-control-allow-methods"], /POST/);
  });
});

describe("long-poll fallback and limits", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  let proxy;
  const sockets = [];

  before(async () => {
    server = await startServer({ max_longpoll_sessions: 4, longpoll_window_ms: 1000 });
    // A proxy that breaks WebSockets (refuses every upgrade) and passes plain HTTP on.
    proxy = http.createServer((req, res) => {
      const up = http.request(
        { host: "127.0.0.1", port: server.port, method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => res.destroy());
      req.pipe(up);
    });
    proxy.on("upgrade", (req, socket) => {
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  });

  after(async () => {
    await closeAll(sockets);
    if (proxy) proxy.close();
    if (server) await server.stop();
  });

  test("longPollFallbackMs: a refused WebSocket falls back to long-poll, which works", async () => {
    const port = proxy.address().port;
    const via = { ...server, wsUrl: `ws://127.0.0.1:${port}/socket` };
    const s = newSocket(via, { longPollFallbackMs: 300, timeout: 5000 }, sockets);
    await connectSocket(s, 8000).catch(async () => {
      // The failed WebSocket attempt reports an error before the fallback opens.
      await waitFor(() => s.isConnected(), "the fallback to open", 8000);
    });
    await waitFor(() => s.isConnected() && s.transport === LongPoll, "connected over LongPoll", 8000);
    const ch = s.channel("room:fb", {});
    await joinOk(ch);
    const got = collect(ch, "news").items;
    const res = await httpRequest(server, "POST", "/api/broadcast", {
      body: { topic: "room:fb", event: "news", payload: { n: 1 } },
    });
    assert.ok(res.status < 300, res.body);
    await waitFor(() => got.length === 1, "the broadcast over the fallback", 5000);
    assert.deepEqual(got[0], { n: 1 });
    s.disconnect();
  });

  test("the session cap: a new session past max_longpoll_sessions is 500, others unaffected", async () => {
    // Wait for the fallback test's session to expire (1.5 s after its last poll).
    await waitFor(
      async () => sum(await metricsSnapshot(server), "corecast_longpoll_sessions") === 0,
      "no session left",
      6000,
      200,
    );
    // 4 over 2 cores: 2 a core. New sessions open on whichever core accepts: open until one is
    // refused; at most 4 succeed.
    const opened = [];
    let refused = 0;
    for (let i = 0; i < 12 && refused === 0; i++) {
      const r = await lp(server, "GET", "vsn=2.0.0");
      if (r.status === 410) opened.push(r.token);
      else {
        assert.equal(r.status, 500);
        refused++;
      }
    }
    assert.ok(refused === 1 && opened.length <= 4 && opened.length >= 2, `${opened.length} opened`);
    const m = await metricsSnapshot(server);
    assert.ok(sum(m, "corecast_longpoll_refused_total") >= 1);
    // The open ones still work.
    const t = encodeURIComponent(opened[0]);
    assert.deepEqual(await lp(server, "POST", `vsn=2.0.0&token=${t}`, '["1","1","room:c","phx_join",{}]'), {
      status: 200,
    });
  });
});

describe("long-poll with tokens", { timeout: SUITE_TIMEOUT_MS }, () => {
  const SECRET = "lp-secret";
  let server;
  const sockets = [];

  before(async () => {
    server = await startServer({ auth_secret: SECRET, require_token: true });
  });

  after(async () => {
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test("a JWT as phoenix.js's authToken (X-Phoenix-AuthToken): its channels claim limits long-poll joins", async () => {
    const { mintToken } = await import("./helpers.mjs");
    const tok = await mintToken(["--secret", SECRET, "--sub", "dora", "--ttl-secs", "600", "--channels", "room:ok*"]);
    // No token: the session is refused (403: phoenix.js closes for good).
    const refused = await lp(server, "GET", "vsn=2.0.0");
    assert.deepEqual(refused, { status: 403 });
    const s = newSocket(server, { transport: LongPoll, authToken: tok, timeout: 5000 }, sockets);
    await connectSocket(s, 5000);
    await joinOk(s.channel("room:ok1", {}));
    const no = await pushResult(s.channel("room:other", {}).join(), 5000);
    assert.equal(no.status, "error", JSON.stringify(no));
    // A forged token (another key) is refused like on the WebSocket.
    const bad = await mintToken(["--secret", "other", "--sub", "dora", "--ttl-secs", "600"]);
    const r = await lp(server, "GET", "vsn=2.0.0", undefined, { "X-Phoenix-AuthToken": bad });
    assert.deepEqual(r, { status: 403 });
    assert.ok(!server.stderr.includes(bad.split(".")[2]), "the token is not logged");
  });
});
