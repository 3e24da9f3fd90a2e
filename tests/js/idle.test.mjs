// idle_timeout_ms = 500: a silent socket is closed by the server; one that sends phoenix.js
// heartbeats (every 200 ms) is not.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, newSocket, connectSocket, joinOk, closeAll, rawConnect, closeRaw, sleep, SUITE_TIMEOUT_MS } from "./helpers.mjs";

describe("idle timeout", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];
  const raws = [];

  before(async () => {
    server = await startServer({ idle_timeout_ms: 500 });
  });

  after(async () => {
    closeRaw(raws);
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test("a raw ws that sends nothing is closed by the server within 2 s", async (t) => {
    const t0 = Date.now();
    const c = await rawConnect(server, undefined, { pool: raws });
    const closed = await c.waitClosed(2000);
    const after = closed.at - t0;
    // not closed at once: it is the idle timer, not a refusal
    assert.ok(after >= 300, `closed after only ${after} ms (code ${closed.code})`);
    t.diagnostic(`closed after ${after} ms with code ${closed.code} ${JSON.stringify(closed.reason)}`);
  });

  test("a joined but silent raw ws is closed too", async () => {
    const c = await rawConnect(server, undefined, { pool: raws });
    c.send(["1", "1", "room:idle", "phx_join", {}]);
    await c.reply("1");
    await c.waitClosed(2000);
  });

  test("phoenix.js with heartbeatIntervalMs 200 outlives the 500 ms idle timeout (1.5 s)", async () => {
    const s = newSocket(server, { heartbeatIntervalMs: 200 }, sockets);
    await connectSocket(s);
    await joinOk(s.channel("room:alive", {}));
    const conn = s.conn;
    await sleep(1500);
    assert.deepEqual(s.events.error, [], "onError never called");
    assert.equal(s.events.close.length, 0, `closed: ${JSON.stringify(s.events.close.map((e) => e.code))}`);
    assert.equal(s.events.open, 1, "no reconnect");
    assert.equal(s.conn, conn, "same transport");
  });
});
