// Presence (issue 12) with phoenix.js's own `Presence` class, over both cores: members whose
// tokens name alice, bob, ... join presence topics (`presence = ["room:*"]`), each pinned to a
// chosen core (found with the per-core corecast_websockets gauge), and every member's
// Presence must agree: the list after onSync, an update (onJoin with the old and new meta,
// onLeave of the old), a clean leave and a killed connection (onLeave for both), two tabs of
// one user (one key, two metas), a reconnect (only the reconnecting member's meta changes),
// and GET /api/presence (the same keys and phx_refs as list()).
//
// Every member records the presence_state / presence_diff payloads it received (`frames`);
// failures print them, so a failure says what the server sent.

import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Presence } from "phoenix";
import {
  startServer,
  mintToken,
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
  withTimeout,
  WAIT_MS,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const SECRET = "presence-test-secret";
/** The spec's default diff window; waits for "nothing more arrives" are a few of these. */
const DIFF_WINDOW_MS = 100;
const SETTLE_MS = 3 * DIFF_WINDOW_MS;
/** A killed socket is seen by its TCP close: its leave must reach the others within this. */
const KILL_DETECT_MS = 2500;
const PHX_REF = /^[A-Za-z0-9_-]{16}$/;

const clone = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));
const sum = (per) => Object.values(per).reduce((a, b) => a + b, 0);

describe("presence with phoenix.js Presence over two cores", { timeout: 4 * SUITE_TIMEOUT_MS }, () => {
  let server;
  const pool = [];
  const tokens = {};

  before(async () => {
    server = await startServer({ auth_secret: SECRET, presence: ["room:*"] }, { cores: 2 });
    for (const sub of ["alice", "bob", "carol", "dave", "erin"]) {
      tokens[sub] = await mintToken(["--secret", SECRET, "--sub", sub, "--ttl-secs", "600"]);
    }
  });

  afterEach(async () => {
    await closeAll(pool);
    // the next test finds the core of each socket it opens from the gauge: start from zero
    await waitFor(async () => sum(await websocketsPerCore()) === 0, "every socket of the test to be gone", 5000, 50);
  });

  after(async () => {
    await closeAll(pool);
    if (server) await server.stop();
  });

  // -------------------------------------------------------------------------------------------
  // helpers

  /** {core: websockets} from GET /metrics. */
  async function websocketsPerCore() {
    const { series } = await metricsSnapshot(server);
    return series.corecast_websockets || {};
  }

  /** Connect a phoenix.js socket for `sub`; returns {socket, core} (the core that took it). */
  async function connectCounted(sub) {
    const before = await websocketsPerCore();
    const socket = newSocket(server, { params: { token: tokens[sub] } }, pool);
    await connectSocket(socket);
    let last;
    const core = await waitFor(
      async () => {
        last = await websocketsPerCore();
        if (sum(last) !== sum(before) + 1) return false;
        const grew = Object.keys(last).filter((c) => last[c] === (before[c] || 0) + 1);
        return grew.length === 1 ? grew[0] : false;
      },
      `corecast_websockets to count the new socket of ${sub} on one core (before ${JSON.stringify(before)}, last ${JSON.stringify(last)})`,
      3000,
      25,
    );
    return { socket, core: Number(core) };
  }

  async function dropSocket(socket) {
    const i = pool.indexOf(socket);
    if (i >= 0) pool.splice(i, 1);
    await withTimeout(new Promise((r) => socket.disconnect(r)), 3000, "socket disconnect").catch(() => {});
  }

  /**
   * A member: a socket for `sub` on core `core` (any core when undefined; other cores' sockets
   * are closed and tried again), a channel on `topic` with a Presence made before the join,
   * and records of what the Presence reported.
   */
  async function member(topic, sub, { core, meta } = {}) {
    let got;
    for (let attempt = 0; attempt < 40; attempt++) {
      const c = await connectCounted(sub);
      if (core === undefined || c.core === core) {
        got = c;
        break;
      }
      const total = sum(await websocketsPerCore());
      await dropSocket(c.socket);
      await waitFor(async () => sum(await websocketsPerCore()) === total - 1, "a retried socket to be gone", 3000, 25);
    }
    if (!got) throw new Error(`40 sockets for ${sub} and none landed on core ${core}`);
    const { socket } = got;
    const channel = socket.channel(topic, meta === undefined ? {} : { meta });
    const presence = new Presence(channel);
    const m = { sub, topic, socket, channel, presence, core: got.core, syncs: 0, joins: [], leaves: [], frames: [], wire: [] };
    // every message of the topic as it came off the wire: [ms since start, join_ref, ref, event, payload]
    const t0 = Date.now();
    socket.onMessage((msg) => {
      if (msg.topic === topic) m.wire.push([Date.now() - t0, msg.join_ref, msg.ref, msg.event, clone(msg.payload)]);
    });
    presence.onSync(() => m.syncs++);
    presence.onJoin((key, current, newPres) => m.joins.push({ key, current: clone(current), newPres: clone(newPres) }));
    presence.onLeave((key, current, left) => m.leaves.push({ key, current: clone(current), left: clone(left) }));
    channel.on("presence_state", (p) => m.frames.push(["presence_state", clone(p)]));
    channel.on("presence_diff", (p) => m.frames.push(["presence_diff", clone(p)]));
    await joinOk(channel);
    return m;
  }

  /** {key: metas} of a member's Presence. */
  const state = (m) => Object.fromEntries(m.presence.list((key, p) => [key, p.metas]));
  const keys = (m) => Object.keys(state(m)).sort();

  /** Forget what the members recorded so far (events after this are the test's subject). */
  function mark(members) {
    for (const m of members) {
      m.joins = [];
      m.leaves = [];
      m.frames = [];
      m.wire.push(["--- mark ---"]);
      m.syncs = 0;
    }
  }

  function dump(members) {
    return members
      .map((m) => {
        const s = JSON.stringify({
          core: m.core,
          list: state(m),
          wire: m.wire,
          onJoin: m.joins,
          onLeave: m.leaves,
        });
        return `  ${m.sub} (core ${m.core}): ${s.length > 6000 ? s.slice(0, 6000) + "..." : s}`;
      })
      .join("\n");
  }

  /** waitFor(pred) whose timeout prints what every member received. */
  async function waitAll(members, pred, what, ms = WAIT_MS) {
    try {
      return await waitFor(pred, what, ms, 10);
    } catch (e) {
      throw new Error(`${e.message}\nwhat the members saw:\n${dump(members)}`);
    }
  }

  /** Every member has synced and its list shows exactly `expected` keys. */
  function waitKeys(members, expected, observers = members) {
    const want = [...expected].sort();
    return waitAll(
      members,
      () => observers.every((m) => m.syncs > 0 && JSON.stringify(keys(m)) === JSON.stringify(want)),
      `every observer's presence.list() to show exactly ${JSON.stringify(want)}`,
    );
  }

  /** Every diff has both `joins` and `leaves` objects; every meta has a 16-char phx_ref. */
  function checkFrames(members) {
    for (const m of members) {
      for (const [event, p] of m.frames) {
        const parts = event === "presence_diff" ? [p.joins, p.leaves] : [p];
        if (event === "presence_diff") {
          assert.ok(
            p.joins && typeof p.joins === "object" && p.leaves && typeof p.leaves === "object",
            `${m.sub}: presence_diff without joins and leaves objects: ${JSON.stringify(p)}`,
          );
        }
        for (const part of parts) {
          for (const [key, pres] of Object.entries(part)) {
            assert.ok(Array.isArray(pres.metas) && pres.metas.length > 0, `${m.sub}: ${event} ${key}: ${JSON.stringify(pres)}`);
            for (const meta of pres.metas) {
              assert.match(String(meta.phx_ref), PHX_REF, `${m.sub}: ${event} ${key} phx_ref: ${JSON.stringify(meta)}`);
            }
          }
        }
      }
    }
  }

  /** All members hold the same state: same keys, and per key the same set of phx_refs. */
  function refsByKey(m) {
    return Object.fromEntries(
      Object.entries(state(m))
        .map(([k, metas]) => [k, metas.map((x) => x.phx_ref).sort()])
        .sort(([a], [b]) => (a < b ? -1 : 1)),
    );
  }

  function assertSameState(members) {
    const first = refsByKey(members[0]);
    for (const m of members.slice(1)) {
      assert.deepEqual(refsByKey(m), first, `${m.sub} and ${members[0].sub} disagree:\n${dump(members)}`);
    }
  }

  async function apiPresence(topic) {
    const res = await httpRequest(server, "GET", `/api/presence?topic=${encodeURIComponent(topic)}`);
    assert.equal(res.status, 200, `GET /api/presence?topic=${topic} -> ${res.status} ${res.body}`);
    let body;
    assert.doesNotThrow(() => (body = JSON.parse(res.body)), `GET /api/presence body is JSON: ${res.body}`);
    return body;
  }

  const apiRefs = (body) =>
    Object.fromEntries(
      Object.entries(body)
        .map(([k, p]) => [k, p.metas.map((x) => x.phx_ref).sort()])
        .sort(([a], [b]) => (a < b ? -1 : 1)),
    );

  // -------------------------------------------------------------------------------------------

  test("three members on both cores: every presence.list() shows alice, bob and carol after onSync", async () => {
    const alice = await member("room:lobby", "alice", { core: 0 });
    const bob = await member("room:lobby", "bob", { core: 1 });
    const carol = await member("room:lobby", "carol");
    const all = [alice, bob, carol];
    assert.deepEqual(new Set(all.map((m) => m.core)), new Set([0, 1]), "the members are on both cores");

    await waitKeys(all, ["alice", "bob", "carol"]);
    checkFrames(all);
    for (const m of all) {
      assert.ok(
        m.frames.length > 0 && m.frames[0][0] === "presence_state",
        `${m.sub}: the first presence frame is presence_state:\n${dump(all)}`,
      );
      for (const [key, metas] of Object.entries(state(m))) {
        assert.equal(metas.length, 1, `${m.sub} sees one meta for ${key}: ${JSON.stringify(metas)}`);
      }
    }
    const refs = Object.values(refsByKey(alice)).flat();
    assert.equal(new Set(refs).size, 3, `three distinct phx_refs: ${refs}`);
    assertSameState(all);
  });

  test("GET /api/presence (loopback, no api_key) returns the same keys and phx_refs as list()", async () => {
    const topic = "room:api";
    const alice = await member(topic, "alice", { core: 0 });
    const bob = await member(topic, "bob", { core: 1 });
    const carol = await member(topic, "carol");
    const all = [alice, bob, carol];
    await waitKeys(all, ["alice", "bob", "carol"]);
    assertSameState(all);

    const body = await apiPresence(topic);
    assert.deepEqual(Object.keys(body).sort(), keys(alice), `API keys vs list(): ${JSON.stringify(body)}`);
    assert.deepEqual(apiRefs(body), refsByKey(alice), `API phx_refs vs list(): ${JSON.stringify(body)}`);
    for (const m of all) assert.deepEqual(Object.keys(body).sort(), keys(m), `API keys vs ${m.sub}'s list()`);

    // it follows a leave like list() does
    assert.equal((await pushResult(carol.channel.leave())).status, "ok");
    await waitKeys(all, ["alice", "bob"], [alice, bob]);
    let last;
    await waitAll(
      all,
      async () => {
        last = await apiPresence(topic);
        return JSON.stringify(apiRefs(last)) === JSON.stringify(refsByKey(alice));
      },
      `GET /api/presence to follow carol's leave like list() (last ${JSON.stringify(last)})`,
    );
    assert.deepEqual(Object.keys(last).sort(), ["alice", "bob"]);
  });

  test("presence_update: the others' onJoin gets (key, old meta, new meta), onLeave the old meta; list() has one meta, away", async () => {
    const topic = "room:update";
    const alice = await member(topic, "alice", { core: 0, meta: { status: "online" } });
    const bob = await member(topic, "bob", { core: 1, meta: { status: "online" } });
    const carol = await member(topic, "carol", { core: 0, meta: { status: "online" } });
    const all = [alice, bob, carol];
    await waitKeys(all, ["alice", "bob", "carol"]);
    assertSameState(all);
    const oldMetas = state(bob).alice;
    assert.equal(oldMetas.length, 1);
    const old = oldMetas[0];
    assert.equal(old.status, "online", `the join meta's fields are in the meta: ${JSON.stringify(old)}`);
    // let any diff still under way (e.g. carol's own join) arrive before the mark
    await sleep(SETTLE_MS);
    mark(all);
    const ordinary = all.map((m) => collect(m.channel, "presence_update"));

    const r = await pushResult(alice.channel.push("presence_update", { meta: { status: "away" } }), WAIT_MS, "presence_update reply");
    assert.deepEqual(r, { status: "ok", response: {} }, `reply to presence_update: ${JSON.stringify(r)}`);

    const hasAway = (m) => {
      const metas = state(m).alice || [];
      return metas.length === 1 && metas[0].status === "away";
    };
    await waitAll(all, () => all.every(hasAway), "every member's list() to show alice with one meta, status away");
    await sleep(SETTLE_MS);
    checkFrames(all);

    const now = state(bob).alice[0];
    assert.notEqual(now.phx_ref, old.phx_ref, "the update gets a new phx_ref");
    assert.equal(now.phx_ref_prev, old.phx_ref, `phx_ref_prev is the old phx_ref: ${JSON.stringify(now)}`);

    // bob (other core) and carol (alice's core) see the update; so does alice (every member
    // gets the same diff sequence)
    for (const m of [bob, carol, alice]) {
      const ctx = `${m.sub} (core ${m.core}):\n${dump(all)}`;
      assert.equal(m.joins.length, 1, `one onJoin: ${ctx}`);
      assert.equal(m.leaves.length, 1, `one onLeave: ${ctx}`);
      const j = m.joins[0];
      assert.equal(j.key, "alice", ctx);
      assert.deepEqual(j.current && j.current.metas, [old], `onJoin current has the old meta: ${ctx}`);
      assert.equal(j.newPres.metas.length, 1, ctx);
      assert.equal(j.newPres.metas[0].status, "away", `onJoin newPres has the new meta: ${ctx}`);
      assert.deepEqual(j.newPres.metas[0], now, ctx);
      const l = m.leaves[0];
      assert.equal(l.key, "alice", ctx);
      assert.deepEqual(l.left.metas, [old], `onLeave left has the old meta: ${ctx}`);
      assert.deepEqual(l.current.metas, [now], `after onLeave alice has only the new meta: ${ctx}`);
      assert.deepEqual(state(m).alice, [now], ctx);
      assert.deepEqual(keys(m), ["alice", "bob", "carol"], ctx);
    }
    const diffs = (m) => m.frames.filter(([e]) => e === "presence_diff").map(([, p]) => p);
    assert.deepEqual(diffs(bob), diffs(alice), `alice and bob got the same diffs:\n${dump(all)}`);
    assert.deepEqual(diffs(carol), diffs(alice), `alice and carol got the same diffs:\n${dump(all)}`);
    ordinary.forEach((g, i) =>
      assert.deepEqual(g.items, [], `${all[i].sub} got presence_update as an ordinary event`),
    );
    assertSameState(all);
  });

  test("a clean leave and a killed connection: the others' onLeave fires for both, list() keeps the rest", async () => {
    const topic = "room:leave";
    const alice = await member(topic, "alice", { core: 0 });
    const bob = await member(topic, "bob", { core: 1 });
    const carol = await member(topic, "carol", { core: 0 }); // leaves with phx_leave
    const erin = await member(topic, "erin", { core: 1 }); // killed: no close frame, no phx_leave
    const all = [alice, bob, carol, erin];
    const observers = [alice, bob];
    await waitKeys(all, ["alice", "bob", "carol", "erin"]);
    assertSameState(all);
    const carolMetas = state(alice).carol;
    const erinMetas = state(alice).erin;
    await sleep(SETTLE_MS);
    mark(all);

    assert.equal((await pushResult(carol.channel.leave(), WAIT_MS, "phx_leave reply")).status, "ok");
    // kill erin: the TCP connection goes without a close frame, and phoenix.js must not
    // reconnect (that would track erin again)
    erin.socket.reconnectTimer.scheduleTimeout = () => {};
    const tcp = erin.socket.conn._socket;
    assert.ok(tcp && typeof tcp.destroy === "function", "the ws client's TCP socket");
    const killedAt = Date.now();
    tcp.destroy();

    await waitAll(
      all,
      () => observers.every((m) => !("erin" in state(m))),
      `erin's leave to reach alice and bob within ${KILL_DETECT_MS} ms of the kill`,
      KILL_DETECT_MS,
    );
    const detectMs = Date.now() - killedAt;
    await waitKeys(all, ["alice", "bob"], observers);
    await sleep(SETTLE_MS);
    checkFrames(observers);

    for (const m of observers) {
      const ctx = `${m.sub} (core ${m.core}), erin's leave seen after ${detectMs} ms:\n${dump(all)}`;
      assert.deepEqual(m.joins, [], `no onJoin: ${ctx}`);
      const byKey = Object.fromEntries(m.leaves.map((l) => [l.key, l]));
      assert.deepEqual(m.leaves.map((l) => l.key).sort(), ["carol", "erin"], `onLeave for carol and erin only: ${ctx}`);
      assert.deepEqual(byKey.carol.left.metas, carolMetas, ctx);
      assert.deepEqual(byKey.carol.current.metas, [], ctx);
      assert.deepEqual(byKey.erin.left.metas, erinMetas, ctx);
      assert.deepEqual(byKey.erin.current.metas, [], ctx);
      assert.deepEqual(keys(m), ["alice", "bob"], ctx);
    }
    assertSameState(observers);
    const body = await apiPresence(topic);
    assert.deepEqual(apiRefs(body), refsByKey(alice), `GET /api/presence after the leave and the kill: ${JSON.stringify(body)}`);
  });

  test("two tabs of one user: list() shows one key dave with two metas (different phx_ref)", async () => {
    const topic = "room:tabs";
    const tab1 = await member(topic, "dave", { core: 0, meta: { tab: 1 } });
    const tab2 = await member(topic, "dave", { core: 1, meta: { tab: 2 } });
    const alice = await member(topic, "alice");
    const all = [tab1, tab2, alice];
    const twoTabs = (m) => {
      const s = state(m);
      return s.dave && s.dave.length === 2 && s.alice && s.alice.length === 1;
    };
    await waitKeys(all, ["alice", "dave"]);
    await waitAll(all, () => all.every(twoTabs), "every list() to show dave with two metas and alice with one");
    checkFrames(all);
    assertSameState(all);
    const metas = state(alice).dave;
    assert.notEqual(metas[0].phx_ref, metas[1].phx_ref, `two phx_refs: ${JSON.stringify(metas)}`);
    assert.deepEqual(metas.map((x) => x.tab).sort(), [1, 2], `each tab's meta: ${JSON.stringify(metas)}`);
    assert.deepEqual(apiRefs(await apiPresence(topic)), refsByKey(alice), "GET /api/presence shows both tabs");

    // one tab closes: dave stays, with the other tab's meta
    await sleep(SETTLE_MS);
    mark(all);
    const tab1Meta = metas.find((x) => x.tab === 1);
    const tab2Meta = metas.find((x) => x.tab === 2);
    await dropSocket(tab1.socket);
    const rest = [tab2, alice];
    await waitAll(all, () => rest.every((m) => (state(m).dave || []).length === 1), "dave to have one meta left");
    await sleep(SETTLE_MS);
    for (const m of rest) {
      const ctx = `${m.sub}:\n${dump(all)}`;
      assert.deepEqual(state(m).dave, [tab2Meta], ctx);
      assert.deepEqual(keys(m), ["alice", "dave"], ctx);
      assert.deepEqual(m.joins, [], ctx);
      assert.equal(m.leaves.length, 1, ctx);
      assert.equal(m.leaves[0].key, "dave", ctx);
      assert.deepEqual(m.leaves[0].left.metas, [tab1Meta], ctx);
      assert.deepEqual(m.leaves[0].current.metas, [tab2Meta], ctx);
    }
  });

  /**
   * alice, bob and carol stay; erin's socket goes (`cut` does it) and phoenix.js connects and
   * rejoins. The others see only erin's meta change (a leave of the old phx_ref and a join of a
   * new one); erin's Presence re-syncs without onJoin/onLeave for alice, bob or carol.
   */
  async function reconnectCase(topic, cut) {
    const alice = await member(topic, "alice", { core: 0 });
    const bob = await member(topic, "bob", { core: 1 });
    const carol = await member(topic, "carol");
    const erin = await member(topic, "erin");
    const all = [alice, bob, carol, erin];
    const observers = [alice, bob, carol];
    const everyone = ["alice", "bob", "carol", "erin"];
    await waitKeys(all, everyone);
    assertSameState(all);
    const before = refsByKey(alice);
    const [oldRef] = before.erin;
    const oldJoinRef = erin.channel.joinRef();
    await sleep(SETTLE_MS);
    mark(all);

    await cut(erin);
    // erin is back when its channel rejoined and its Presence synced on the new join
    await waitAll(
      all,
      () =>
        erin.channel.state === "joined" &&
        erin.channel.joinRef() !== oldJoinRef &&
        erin.presence.joinRef === erin.channel.joinRef() &&
        erin.frames.some(([e]) => e === "presence_state"),
      "erin to rejoin and get a new presence_state",
      4 * WAIT_MS,
    );
    const newErin = () => {
      const metas = state(erin).erin || [];
      return metas.length === 1 && metas[0].phx_ref !== oldRef ? metas[0].phx_ref : false;
    };
    const newRef = await waitAll(all, newErin, "erin's own list() to show erin with one new phx_ref");
    await waitAll(
      all,
      () =>
        all.every((m) => {
          const s = refsByKey(m);
          return JSON.stringify(Object.keys(s)) === JSON.stringify(everyone) && JSON.stringify(s.erin) === JSON.stringify([newRef]);
        }),
      `every list() to show the four members, erin with only its new phx_ref ${newRef}`,
    );
    await sleep(SETTLE_MS);
    checkFrames(all);
    assert.match(newRef, PHX_REF);
    for (const k of ["alice", "bob", "carol"]) {
      assert.deepEqual(refsByKey(erin)[k], before[k], `${k} kept its phx_ref`);
    }

    for (const m of observers) {
      const ctx = `${m.sub} (core ${m.core}), erin's ref ${oldRef} -> ${newRef}:\n${dump(all)}`;
      assert.deepEqual([...new Set([...m.joins, ...m.leaves].map((e) => e.key))], ["erin"], `events only for erin: ${ctx}`);
      assert.equal(m.joins.length, 1, `one onJoin for erin: ${ctx}`);
      assert.equal(m.leaves.length, 1, `one onLeave for erin: ${ctx}`);
      assert.deepEqual(m.joins[0].newPres.metas.map((x) => x.phx_ref), [newRef], `the join is erin's new meta: ${ctx}`);
      assert.deepEqual(m.leaves[0].left.metas.map((x) => x.phx_ref), [oldRef], `the leave is erin's old meta: ${ctx}`);
    }
    // erin's own Presence: nothing for the members that did not change
    const ctx = `erin (core ${erin.core}):\n${dump(all)}`;
    assert.deepEqual(erin.joins.filter((e) => e.key !== "erin"), [], `erin: no onJoin for alice/bob/carol: ${ctx}`);
    assert.deepEqual(erin.leaves.filter((e) => e.key !== "erin"), [], `erin: no onLeave for alice/bob/carol: ${ctx}`);
    for (const e of erin.joins) {
      assert.deepEqual(e.newPres.metas.map((x) => x.phx_ref), [newRef], `erin's onJoin for itself is its new meta: ${ctx}`);
    }
    for (const e of erin.leaves) {
      assert.deepEqual(e.left.metas.map((x) => x.phx_ref), [oldRef], `erin's onLeave for itself is its old meta: ${ctx}`);
    }
    assertSameState(all);
    assert.deepEqual(apiRefs(await apiPresence(topic)), refsByKey(alice), "GET /api/presence after the reconnect");
  }

  test("reconnect (socket.disconnect() then connect()) re-syncs without spurious onJoin/onLeave", async () => {
    await reconnectCase("room:rejoin", async (erin) => {
      await withTimeout(new Promise((r) => erin.socket.disconnect(r)), 3000, "erin's disconnect");
      erin.socket.connect();
    });
  });

  test("reconnect after a cut TCP connection (phoenix.js reconnects by itself) re-syncs without spurious onJoin/onLeave", async () => {
    await reconnectCase("room:rejoin-cut", async (erin) => {
      const tcp = erin.socket.conn._socket;
      assert.ok(tcp && typeof tcp.destroy === "function", "the ws client's TCP socket");
      const opens = erin.socket.events.open;
      tcp.destroy();
      await waitFor(() => erin.socket.events.open > opens, "phoenix.js to reconnect after the cut", 4 * WAIT_MS, 10);
    });
  });
});
