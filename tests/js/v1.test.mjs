// Phoenix V1 JSON (issue 14): raw V1 messages over `vsn=1.0.0` and with no `vsn` at all (what
// Phoenix gives a client that sends none), answered as Phoenix's V1 serializer writes them; a V1
// socket and a phoenix.js (V2) socket in one topic both get each other's pushes and an API
// broadcast, each in its own format.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  newSocket,
  connectSocket,
  joinOk,
  collect,
  closeAll,
  rawConnect,
  closeRaw,
  httpRequest,
  pushResult,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

describe("Phoenix V1 JSON", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];
  const raws = [];

  before(async () => {
    server = await startServer({});
  });

  after(async () => {
    closeRaw(raws);
    await closeAll(sockets);
    if (server) await server.stop();
  });

  for (const [name, path] of [
    ["vsn=1.0.0", "/socket/websocket?vsn=1.0.0"],
    ["no vsn", "/socket/websocket"],
  ]) {
    test(`${name}: join, heartbeat, push and leave in V1 objects, never a join_ref`, async () => {
      const c = await rawConnect(server, path, { pool: raws });
      c.send({ topic: "room:v1", event: "phx_join", payload: {}, ref: "1", join_ref: "1" });
      const joined = await c.next((m) => m.event === "phx_reply" && m.ref === "1", "join reply");
      assert.deepEqual(joined, { topic: "room:v1", event: "phx_reply", payload: { status: "ok", response: {} }, ref: "1" });
      c.send({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "2" });
      const hb = await c.next((m) => m.ref === "2", "heartbeat reply");
      assert.equal(hb.payload.status, "ok");
      c.send({ topic: "room:v1", event: "new_msg", payload: { body: name }, ref: "3", join_ref: "1" });
      const own = await c.next((m) => m.event === "new_msg", "the broadcast of its own push");
      assert.deepEqual(own, { topic: "room:v1", event: "new_msg", payload: { body: name }, ref: null });
      assert.ok(!("join_ref" in own));
      await c.next((m) => m.event === "phx_reply" && m.ref === "3", "push reply");
      c.send({ topic: "room:v1", event: "phx_leave", payload: {}, ref: "4", join_ref: "1" });
      await c.next((m) => m.event === "phx_reply" && m.ref === "4", "leave reply");
      const close = await c.next((m) => m.event === "phx_close", "phx_close");
      assert.equal(close.topic, "room:v1");
      assert.ok(!("join_ref" in close));
    });
  }

  test("a V2 array on a V1 socket is not a V1 message: the socket is closed", async () => {
    const c = await rawConnect(server, "/socket/websocket", { pool: raws });
    c.send(["1", "1", "room:v1", "phx_join", {}]);
    const deadline = Date.now() + 3000;
    while (!c.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.ok(c.closed, "closed");
    assert.equal(c.closed.code, 1007);
  });

  test("a V1 socket and a phoenix.js V2 socket in one topic: each gets the other's push and the API's broadcast", async () => {
    const v1 = await rawConnect(server, "/socket/websocket?vsn=1.0.0", { pool: raws });
    v1.send({ topic: "room:mixed", event: "phx_join", payload: {}, ref: "1", join_ref: "1" });
    await v1.next((m) => m.event === "phx_reply", "V1 join");
    const s = newSocket(server, {}, sockets);
    await connectSocket(s);
    const ch = s.channel("room:mixed", {});
    await joinOk(ch);
    const got = collect(ch, "new_msg");

    v1.send({ topic: "room:mixed", event: "new_msg", payload: { from: "v1" }, ref: "2", join_ref: "1" });
    await got.atLeast(1);
    assert.equal(got.items[0].from, "v1");

    assert.equal((await pushResult(ch.push("new_msg", { from: "v2" }))).status, "ok");
    const fromV2 = await v1.next((m) => m.event === "new_msg" && m.payload.from === "v2", "V2's push on V1");
    assert.equal(fromV2.ref, null);

    const res = await httpRequest(server, "POST", "/api/broadcast", {
      body: { topic: "room:mixed", event: "new_msg", payload: { from: "api" } },
    });
    assert.equal(res.status, 202);
    await v1.next((m) => m.event === "new_msg" && m.payload.from === "api", "the API's broadcast on V1");
    await got.atLeast(3);
    assert.equal(got.items.at(-1).from, "api");
  });
});
