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
  connectionsPerCore,
  httpRequest,
  sleep,
  waitFor,
} from "./helpers.mjs";

const N = 20;
const TOPIC = "room:1";
const API_KEY = "k-test-123";

describe("broadcast across cores", () => {
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

  test(`GET /metrics shows the ${N} connections spread over both cores`, async () => {
    let last;
    await waitFor(
      async () => {
        last = await connectionsPerCore(server);
        const total = Object.values(last.per).reduce((a, b) => a + b, 0);
        return total === N;
      },
      `corecast_connections to add up to ${N} (last: ${JSON.stringify(last && last.per)})`,
      2000,
      100,
    ).catch((e) => {
      throw new Error(`${e.message}\n/metrics:\n${last ? last.text : "(none)"}`);
    });
    assert.deepEqual(Object.keys(last.per).sort(), ["0", "1"], "one gauge per core");
    assert.ok(last.per["0"] >= 1 && last.per["1"] >= 1, `both cores hold sockets: ${JSON.stringify(last.per)}`);
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
