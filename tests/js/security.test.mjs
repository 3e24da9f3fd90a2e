// One hostile member or web page against a phoenix.js victim (issue 10): reserved events,
// fake presence diffs, non-object payloads and a cross-origin API call must leave the
// victim's channel joined, fire neither onClose nor onError, plant nothing in its Presence,
// throw nothing in the client, and the next ordinary broadcast still arrives.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Presence } from "phoenix";
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
  sleep,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

describe("security: what one client can do to a phoenix.js victim", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];
  const raws = [];
  const thrown = [];
  const onThrow = (e) => thrown.push(e);

  before(async () => {
    server = await startServer({});
    process.on("uncaughtException", onThrow);
  });

  after(async () => {
    process.off("uncaughtException", onThrow);
    closeRaw(raws);
    await closeAll(sockets);
    if (server) await server.stop();
  });

  /** A victim with a logger (phoenix.js then reads `payload.status` of every message). */
  async function victim(topic) {
    const logged = [];
    const s = await connectSocket(
      newSocket(server, { logger: (kind, msg, data) => logged.push([kind, msg, data]) }, sockets),
    );
    const ch = s.channel(topic, {});
    const presence = new Presence(ch);
    const syncs = [];
    presence.onSync(() => syncs.push(presence.list()));
    const events = { close: 0, error: 0 };
    ch.onClose(() => events.close++);
    ch.onError(() => events.error++);
    const msgs = collect(ch, "new_msg");
    await joinOk(ch);
    return { s, ch, presence, syncs, events, msgs, logged };
  }

  async function attacker(topic) {
    const a = await rawConnect(server, undefined, { pool: raws });
    a.send(["1", "1", topic, "phx_join", {}]);
    const r = await a.reply("1");
    assert.equal(r[4].status, "ok");
    return a;
  }

  function binaryPush(joinRef, ref, topic, event, bytes) {
    const enc = new TextEncoder();
    const parts = [joinRef, ref, topic, event].map((s) => enc.encode(s));
    const out = new Uint8Array(5 + parts.reduce((n, p) => n + p.length, 0) + bytes.length);
    out.set([0, ...parts.map((p) => p.length)], 0);
    let at = 5;
    for (const p of [...parts, bytes]) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  test("reserved events, fake presence and null payloads reach no one", async () => {
    const topic = "room:x";
    const v = await victim(topic);
    const a = await attacker(topic);
    let ref = 10;
    const hostile = [
      ["phx_close", {}],
      ["phx_error", {}],
      ["phx_reply", { status: "ok", response: {} }],
      ["presence_state", { evil: { metas: [{ phx_ref: "AAAA" }] } }],
      ["presence_diff", { joins: { evil: { metas: [{ phx_ref: "BBBB" }] } }, leaves: {} }],
    ];
    for (const [event, payload] of hostile) {
      const r = String(ref++);
      a.send(["1", r, topic, event, payload]);
      const reply = await a.reply(r);
      assert.deepEqual(reply[4], { status: "error", response: { reason: "reserved event" } }, event);
    }
    a.send(binaryPush("1", String(ref), topic, "phx_close", new TextEncoder().encode("{}")));
    assert.deepEqual((await a.reply(String(ref++)))[4].response, { reason: "reserved event" });
    for (const payload of [null, [1], 7, "s"]) {
      const r = String(ref++);
      a.send(["1", r, topic, "new_msg", payload]);
      const reply = await a.reply(r);
      assert.deepEqual(reply[4].response, { reason: "payload must be a JSON object" });
    }
    // The next ordinary broadcast arrives, and is the only new_msg the victim ever saw.
    a.send(["1", String(ref), topic, "new_msg", { body: "hello" }]);
    const got = await v.msgs.atLeast(1);
    assert.deepEqual(got, [{ body: "hello" }]);
    await sleep(100);
    assert.equal(v.ch.state, "joined");
    assert.deepEqual(v.events, { close: 0, error: 0 });
    assert.deepEqual(v.presence.list(), []);
    assert.deepEqual(v.syncs, [], "no presence_state or presence_diff reached the victim");
    assert.deepEqual(thrown, [], "nothing thrown in the client");
  });

  test("a cross-origin page cannot publish through the API", async () => {
    const topic = "room:csrf";
    const v = await victim(topic);
    // What a fetch() from a foreign page sends: an Origin, and a "simple" content type.
    for (const headers of [
      { Origin: "https://evil.example", "Content-Type": "application/json" },
      { Origin: "https://evil.example", "Content-Type": "text/plain" },
    ]) {
      const res = await httpRequest(server, "POST", "/api/broadcast", {
        headers,
        body: JSON.stringify({ topic, event: "new_msg", payload: { forged: true } }),
      });
      assert.ok(res.status === 403 || res.status === 415, `${JSON.stringify(headers)} -> ${res.status}`);
    }
    const res = await httpRequest(server, "POST", "/api/broadcast", {
      headers: { Origin: "https://evil.example", "Content-Type": "application/json" },
      body: JSON.stringify({ topic, event: "phx_close", payload: {} }),
    });
    assert.notEqual(res.status, 202);
    // A backend on loopback (no Origin, JSON) still publishes.
    const ok = await httpRequest(server, "POST", "/api/broadcast", {
      body: { topic, event: "new_msg", payload: { from: "backend" } },
    });
    assert.equal(ok.status, 202, ok.body);
    const got = await v.msgs.atLeast(1);
    assert.deepEqual(got, [{ from: "backend" }]);
    assert.equal(v.ch.state, "joined");
    assert.deepEqual(v.events, { close: 0, error: 0 });
  });
});
