// History and recovery (issue 16) with the official phoenix.js client, unchanged: the app
// joins a history topic (`[[history]] pattern = "room:*"`) with a params *function* that
// returns the last position it saw (phoenix.js evaluates it again on every rejoin); its TCP
// connection is cut (reset through a proxy in this file, no leave, no close frame) and kept
// down while 50 messages are published; phoenix.js reconnects and rejoins by itself; the app
// must see every message exactly once, in order, then the live ones. A gap longer than the
// history's `size` gives `recovered: false` with the current position, and nothing replayed.
//
// Several clients go through the proxy, so that (whatever the kernel's spread) some sit on
// the topic's home core and some on the other: recovery is answered on the socket's own core.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import {
  startServerToml,
  newSocket,
  connectSocket,
  httpRequest,
  metricsSnapshot,
  closeAll,
  waitFor,
  sleep,
  WAIT_MS,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const SIZE = 100;
const CONFIG = `
[[history]]
pattern = "room:*"
size = ${SIZE}
ttl_secs = 300
`;
const TOPIC = "room:recover";
const CLIENTS = 4;

/**
 * A TCP proxy to `port` that can cut every connection it carries (a reset to the client, the
 * server's side destroyed) and refuse new ones while it is down.
 */
async function startProxy(port) {
  const pairs = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(port, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${server.address().port}/socket`,
    /** Reset every connection and refuse new ones until up(). */
    cut() {
      down = true;
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    up() {
      down = false;
    },
    close: () => new Promise((r) => server.close(r)),
  };
}

/** The app: one phoenix.js socket through the proxy, one channel, what it saw. */
function app(proxy, pool) {
  const a = { seen: [], replies: [], last: null, positions: [] };
  a.socket = newSocket(
    { wsUrl: proxy.url },
    { reconnectAfterMs: () => 100, rejoinAfterMs: () => 100 },
    pool,
  );
  // The params function: the last position seen, asked back on every (re)join.
  a.channel = a.socket.channel(TOPIC, () =>
    a.last ? { recover: { epoch: a.last.e, offset: a.last.o } } : {},
  );
  a.channel.on("msg", (payload) => {
    a.seen.push(payload.n);
    a.positions.push(payload._pos);
    a.last = payload._pos;
  });
  a.channel.join().receive("ok", (response) => a.replies.push(response));
  return a;
}

async function publish(server, from, count) {
  const batch = [];
  for (let n = from; n < from + count; n++) batch.push({ topic: TOPIC, event: "msg", payload: { n } });
  const res = await httpRequest(server, "POST", "/api/broadcast", { body: batch });
  assert.equal(res.status, 202, res.body);
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

describe("history: phoenix.js recovers what it missed", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  let proxy;
  const pool = [];

  before(async () => {
    server = await startServerToml(CONFIG, { cores: 2 });
    proxy = await startProxy(server.port);
  });

  after(async () => {
    await closeAll(pool);
    if (proxy) await proxy.close();
    if (server) await server.stop();
  });

  test("a cut connection: all 50 exactly once, in order, then live; a longer gap: recovered false", async () => {
    // At least CLIENTS, and until both cores hold some (the kernel spreads the connections).
    const apps = [];
    const perCore = async () => (await metricsSnapshot(server)).series.corecast_websockets || {};
    for (;;) {
      const a = app(proxy, pool);
      await connectSocket(a.socket);
      apps.push(a);
      const cores = await perCore();
      if (apps.length >= CLIENTS && cores[0] > 0 && cores[1] > 0) break;
      assert.ok(apps.length < 32, `every connection on one core: ${JSON.stringify(cores)}`);
    }
    await waitFor(() => apps.every((a) => a.replies.length === 1), "every first join reply");
    for (const a of apps) {
      assert.equal(a.replies[0].offset, 0, "nothing published yet");
      assert.equal(a.replies[0].recovered, undefined, "not asked to recover");
    }

    // Live first: 5 messages, each carrying its position.
    await publish(server, 0, 5);
    await waitFor(() => apps.every((a) => a.seen.length === 5), "5 live messages");
    const epoch = apps[0].last.e;
    for (const a of apps) {
      assert.deepEqual(a.seen, range(0, 5));
      assert.deepEqual(a.positions.map((p) => p.o), range(1, 6), "offsets 1..5");
      assert.ok(a.positions.every((p) => p.e === epoch), "one epoch");
    }

    // Cut: no leave, no close frame. 50 published while the clients cannot reconnect.
    const closes = apps.map((a) => a.socket.events.close.length);
    proxy.cut();
    await waitFor(
      () => apps.every((a, i) => a.socket.events.close.length > closes[i]),
      "phoenix.js to see its connection gone",
    );
    await publish(server, 5, 50);
    await sleep(300); // several of phoenix.js's reconnect attempts are refused meanwhile
    proxy.up();
    await waitFor(() => apps.every((a) => a.replies.length === 2), "every rejoin reply", 3 * WAIT_MS);
    for (const a of apps) {
      assert.deepEqual(a.replies[1], { epoch, offset: 55, recovered: true });
    }
    await waitFor(() => apps.every((a) => a.seen.length === 55), "the 50 missed");
    await publish(server, 55, 5);
    await waitFor(() => apps.every((a) => a.seen.length === 60), "5 more live");
    await sleep(200); // and nothing else: no duplicate arrives late
    for (const a of apps) {
      assert.deepEqual(a.seen, range(0, 60), "every message exactly once, in order");
      assert.deepEqual(a.positions.map((p) => p.o), range(1, 61));
    }

    // A gap longer than the history: recovered false, the current position, nothing replayed.
    const closes2 = apps.map((a) => a.socket.events.close.length);
    proxy.cut();
    await waitFor(
      () => apps.every((a, i) => a.socket.events.close.length > closes2[i]),
      "the second cut to be seen",
    );
    await publish(server, 60, SIZE + 50);
    await sleep(300);
    proxy.up();
    await waitFor(() => apps.every((a) => a.replies.length === 3), "every second rejoin reply", 3 * WAIT_MS);
    const current = 60 + SIZE + 50;
    for (const a of apps) {
      assert.deepEqual(a.replies[2], { epoch, offset: current, recovered: false });
    }
    await sleep(200);
    for (const a of apps) assert.equal(a.seen.length, 60, "nothing replayed after recovered: false");
    // The app knows to refetch: the API has the last SIZE of them.
    const h = JSON.parse((await httpRequest(server, "GET", `/api/history?topic=${TOPIC}&since=60`)).body);
    assert.equal(h.first, current - SIZE + 1);
    assert.equal(h.publications.length, SIZE);
    // Live again, after the new position.
    await publish(server, current, 3);
    await waitFor(() => apps.every((a) => a.seen.length === 63), "live after the gap");
    for (const a of apps) {
      assert.deepEqual(a.seen.slice(60), range(current, current + 3));
      assert.equal(a.last.o, current + 3);
    }
  });
});
