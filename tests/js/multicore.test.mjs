// Broadcasts across cores: 20 phoenix.js sockets on one topic, spread over both cores (checked
// with GET /metrics); a client push and a POST /api/broadcast each reach all 20 exactly once.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  newSocket,
  connectSocket,
  joinOk,
  pushResult,
  collect,
  closeAll,
  metricsSnapshot,
  httpRequest,
  sleep,
  waitFor,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const N = 20;
const TOPIC = "room:1";
const API_KEY = "k-test-123";

describe("broadcast across cores", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];
  const channels = [];

  before(async () => {
    server = await startServer({ api_key: API_KEY });
    for (let i = 0; i < N; i++) {
      const s = await connectSocket(newSocket(server, { params: { i } }, sockets));
      channels.push(s.channel(TOPIC, {}));
    }
    await Promise.all(channels.map((c) => joinOk(c)));
  });

  after(async () => {
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test(`GET /metrics shows the ${N} sockets spread over both cores`, async () => {
    // corecast_connections counts open TCP connections in any phase, which includes the
    // HTTP connection of the scrape itself while it is answered (so N or N + 1); the
    // spread is judged on corecast_websockets, which counts upgraded sockets only.
    let last;
    const sum = (per) => Object.values(per).reduce((a, b) => a + b, 0);
    try {
      await waitFor(
        async () => {
          last = await metricsSnapshot(server);
          const conns = sum(last.series.corecast_connections || {});
          const ws = sum(last.series.corecast_websockets || {});
          return ws === N && (conns === N || conns === N + 1);
        },
        `corecast_websockets to add up to ${N} and corecast_connections to ${N} (+1 for the scrape)`,
        2000,
        100,
      );
    } catch (e) {
      throw new Error(`${e.message}\nlast /metrics:\n${last ? last.text : "(none)"}`);
    }
    const conns = last.series.corecast_connections;
    const ws = last.series.corecast_websockets;
    assert.deepEqual(Object.keys(conns).sort(), ["0", "1"], "one corecast_connections gauge per core");
    assert.deepEqual(Object.keys(ws).sort(), ["0", "1"], "one corecast_websockets gauge per core");
    assert.ok(ws["0"] >= 1 && ws["1"] >= 1, `both cores hold sockets: ${JSON.stringify(ws)}`);
    assert.ok(conns["0"] >= ws["0"] && conns["1"] >= ws["1"], `connections >= websockets per core: ${JSON.stringify({ conns, ws })}`);
  });

  test(`one push is received exactly once by all ${N} subscribers`, async () => {
    const gs = channels.map((c) => collect(c, "new_msg"));
    const r = await pushResult(channels[7].push("new_msg", { body: "fan-out", from: 7 }));
    assert.equal(r.status, "ok", JSON.stringify(r));
    await Promise.all(gs.map((g) => g.atLeast(1)));
    await sleep(300);
    gs.forEach((g, i) => {
      assert.equal(g.items.length, 1, `subscriber ${i} got ${g.items.length} copies`);
      assert.deepEqual(g.items[0], { body: "fan-out", from: 7 });
    });
  });

  test("POST /api/broadcast without the key is 401, with a wrong key 401", async () => {
    const body = { topic: TOPIC, event: "announce", payload: { x: 0 } };
    const gs = channels.map((c) => collect(c, "announce"));
    const none = await httpRequest(server, "POST", "/api/broadcast", { body });
    assert.equal(none.status, 401, `no key: ${none.status} ${none.body}`);
    const wrong = await httpRequest(server, "POST", "/api/broadcast", {
      body,
      headers: { Authorization: "Bearer nope" },
    });
    assert.equal(wrong.status, 401, `wrong key: ${wrong.status} ${wrong.body}`);
    await sleep(300);
    gs.forEach((g, i) => assert.deepEqual(g.items, [], `subscriber ${i} got a refused broadcast`));
    channels.forEach((c) => c.off("announce"));
  });

  test(`POST /api/broadcast with the key reaches all ${N} subscribers on both cores once`, async () => {
    const gs = channels.map((c) => collect(c, "announce"));
    const res = await httpRequest(server, "POST", "/api/broadcast", {
      body: { topic: TOPIC, event: "announce", payload: { x: 1 } },
      headers: { Authorization: `Bearer ${API_KEY}` },
    });
    assert.ok(res.status >= 200 && res.status < 300, `POST /api/broadcast -> ${res.status} ${res.body}`);
    await Promise.all(gs.map((g) => g.atLeast(1)));
    await sleep(300);
    gs.forEach((g, i) => {
      assert.equal(g.items.length, 1, `subscriber ${i} got ${g.items.length} copies`);
      assert.deepEqual(g.items[0], { x: 1 });
    });
  });
});
