// The cluster over NATS with real phoenix.js clients (the JS side of tests/cluster.rs): one
// nats-server on a free loopback port and three corecast nodes (n1, n2, n3) joined to it, two
// phoenix.js sockets per node, each with a token for its own user and a `Presence` on one
// topic. Tests run in order on the same cluster:
//   1. a push from a client on node 1 (10 messages), then POST /api/broadcast on node 3: every
//      client on every node gets each message exactly once, in order;
//   2. every client's presence.list() shows all six users;
//   3. node 2 is killed with SIGKILL: the others keep getting node 1's broadcasts, and node 2's
//      users leave everyone's list after the down period (not before ~1 s, within ~5 s).
//
// Before publishing, each node must be subscribed to the topic on NATS
// (corecast_cluster_subscriptions >= 1): a join on one node followed at once by a publish on
// another may miss it (documented).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { accessSync, constants as fsConstants } from "node:fs";
import net from "node:net";
import { delimiter, join } from "node:path";
import { Presence } from "phoenix";
import {
  startServerToml,
  mintToken,
  newSocket,
  connectSocket,
  joinOk,
  collect,
  closeAll,
  httpRequest,
  sleep,
  waitFor,
  withTimeout,
} from "./helpers.mjs";

const SECRET = "cluster-test-secret";
const TOPIC = "room:cluster";
const HEARTBEAT_MS = 200;
const DOWN_PERIOD_MS = 1500;
/** A killed node's presences must not leave before this (the down period, less slack)... */
const LEAVE_NOT_BEFORE_MS = 1000;
/** ...and must have left everyone's list within this. */
const LEAVE_WITHIN_MS = 5000;
/** How long "nothing more arrives" is watched. */
const QUIET_MS = 300;

const NODES = ["n1", "n2", "n3"];
/** Two users per node: USERS[i] are node i's. */
const USERS = [
  ["alice", "bob"],
  ["carol", "dave"],
  ["erin", "frank"],
];
const ALL_USERS = USERS.flat().sort();

// ---------------------------------------------------------------------------------------------
// nats-server

function natsBin() {
  const dirs = (process.env.PATH || "").split(delimiter).filter(Boolean);
  for (const d of [...dirs, "/usr/sbin", "/usr/bin", "/usr/local/bin"]) {
    const p = join(d, "nats-server");
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {}
  }
  throw new Error(
    "nats-server is not installed (looked in PATH and /usr/sbin): `make test` installs it, or apt-get install nats-server",
  );
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

let natsProc;
process.on("exit", () => {
  try {
    natsProc && natsProc.kill("SIGKILL");
  } catch {}
});

async function startNats() {
  const bin = natsBin();
  const port = await freePort();
  const proc = spawn(bin, ["-a", "127.0.0.1", "-p", String(port)], { stdio: ["ignore", "ignore", "pipe"] });
  natsProc = proc;
  let stderr = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (d) => {
    stderr += d;
    if (stderr.length > 32 * 1024) stderr = stderr.slice(-16 * 1024);
  });
  let exited = null;
  proc.once("exit", (code, sig) => (exited = { code, sig }));
  proc.once("error", (e) => (exited = { error: e.message }));
  await waitFor(
    async () => {
      if (exited) throw new Error(`nats-server (${bin}) exited before listening: ${JSON.stringify(exited)}\n${stderr}`);
      return canConnect(port);
    },
    `nats-server (${bin}) to listen on 127.0.0.1:${port}`,
    10000,
    20,
  );
  return {
    proc,
    port,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const gone = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGKILL");
        await withTimeout(gone, 3000, "nats-server to exit").catch(() => {});
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------

function nodeConfig(natsPort, name) {
  return [
    `presence = ["${TOPIC.split(":")[0]}:*"]`,
    `auth_secret = "${SECRET}"`,
    `[cluster]`,
    `nats_url = ["nats://127.0.0.1:${natsPort}"]`,
    `node = "${name}"`,
    `presence_heartbeat_ms = ${HEARTBEAT_MS}`,
    `down_period_ms = ${DOWN_PERIOD_MS}`,
    ``,
  ].join("\n");
}

/** The unlabelled-or-labelled gauge `name` from a node's /metrics (summed over its series). */
async function metric(node, name) {
  const res = await httpRequest(node, "GET", "/metrics");
  if (res.status !== 200) throw new Error(`GET /metrics on ${node.name} -> ${res.status}: ${res.body}`);
  const re = new RegExp(`^${name}(?:\\{[^}]*\\})?\\s+(\\d+(?:\\.\\d+)?)\\s*$`, "gm");
  let m;
  let sum = 0;
  let found = false;
  while ((m = re.exec(res.body))) {
    found = true;
    sum += Number(m[1]);
  }
  if (!found) throw new Error(`${name} is not in ${node.name}'s /metrics`);
  return sum;
}

async function apiBroadcast(node, payload) {
  const res = await httpRequest(node, "POST", "/api/broadcast", {
    body: { topic: TOPIC, event: "new_msg", payload },
  });
  assert.equal(res.status, 202, `POST /api/broadcast on ${node.name} -> ${res.status} ${res.body}`);
}

describe("a three-node cluster over NATS with phoenix.js clients", { timeout: 60000 }, () => {
  let nats;
  const nodes = [];
  const pool = [];
  /** {sub, node (index), socket, channel, presence, msgs, syncs} */
  const clients = [];

  const listKeys = (c) => c.presence.list((key) => key).sort();
  const nOf = (c) => c.msgs.items.map((p) => p.n);
  const dump = (cs) =>
    cs
      .map((c) => `  ${c.sub} (node ${c.node + 1}): syncs=${c.syncs} list=${JSON.stringify(listKeys(c))} n=${JSON.stringify(nOf(c))}`)
      .join("\n");

  before(async () => {
    nats = await startNats();
    for (const name of NODES) {
      const node = await startServerToml(nodeConfig(nats.port, name), { cores: 2 });
      node.name = name;
      nodes.push(node);
    }
    for (const [i, subs] of USERS.entries()) {
      for (const sub of subs) {
        const token = await mintToken(["--secret", SECRET, "--sub", sub, "--ttl-secs", "600"]);
        const socket = newSocket(nodes[i], { params: { token } }, pool);
        await connectSocket(socket);
        const channel = socket.channel(TOPIC, {});
        const presence = new Presence(channel);
        const c = { sub, node: i, socket, channel, presence, syncs: 0, msgs: collect(channel, "new_msg") };
        presence.onSync(() => c.syncs++);
        clients.push(c);
      }
    }
    await Promise.all(clients.map((c) => joinOk(c.channel)));
  });

  after(async () => {
    await closeAll(pool);
    for (const n of nodes) await n.stop();
    if (nats) await nats.stop();
  });

  test("a push on node 1 (10 messages) and POST /api/broadcast on node 3 reach every client on every node once, in order", async () => {
    for (const n of nodes) {
      let last;
      await waitFor(
        async () => (last = await metric(n, "corecast_cluster_subscriptions")) >= 1,
        `${n.name} to be subscribed on NATS (corecast_cluster_subscriptions >= 1, last ${last})`,
        5000,
        20,
      );
      assert.equal(await metric(n, "corecast_cluster_connected"), 1, `${n.name} is connected to NATS`);
    }

    const pusher = clients[0];
    for (let n = 0; n < 10; n++) pusher.channel.push("new_msg", { n });
    const want = [...Array(10).keys()];
    try {
      await Promise.all(clients.map((c) => c.msgs.atLeast(10, 5000)));
    } catch (e) {
      throw new Error(`${e.message}\n${dump(clients)}`);
    }

    await apiBroadcast(nodes[2], { n: 100 });
    try {
      await Promise.all(clients.map((c) => c.msgs.atLeast(11, 5000)));
    } catch (e) {
      throw new Error(`${e.message}\n${dump(clients)}`);
    }

    await sleep(QUIET_MS); // no duplicate (an echo from NATS) arrives late
    for (const c of clients) {
      assert.deepEqual(nOf(c), [...want, 100], `${c.sub} on node ${c.node + 1}: every message once, in order`);
    }
  });

  test("every client's presence.list() shows all six users, whatever node it is on", async () => {
    await waitFor(
      () => clients.every((c) => c.syncs > 0 && JSON.stringify(listKeys(c)) === JSON.stringify(ALL_USERS)),
      `every client's list() to show ${JSON.stringify(ALL_USERS)}:\n(see below)`,
      5000,
      10,
    ).catch((e) => {
      throw new Error(`${e.message}\n${dump(clients)}`);
    });
    // and they agree on the metas: one per user, the same phx_ref everywhere
    const refs = (c) => JSON.stringify(c.presence.list((key, p) => [key, p.metas.map((m) => m.phx_ref).sort()]).sort());
    for (const c of clients) {
      for (const [key, metas] of c.presence.list((key, p) => [key, p.metas])) {
        assert.equal(metas.length, 1, `${c.sub} sees one meta for ${key}: ${JSON.stringify(metas)}`);
      }
      assert.equal(refs(c), refs(clients[0]), `${c.sub} and ${clients[0].sub} agree on the phx_refs`);
    }
  });

  test("kill -9 node 2: node 1's broadcasts still reach the others; node 2's users leave after the down period", async (t) => {
    const survivors = clients.filter((c) => c.node !== 1);
    const gone = USERS[1];
    const remaining = ALL_USERS.filter((u) => !gone.includes(u));
    for (const c of survivors) assert.deepEqual(listKeys(c), ALL_USERS, `${c.sub} sees everyone before the kill`);

    const n2 = nodes[1];
    const exited = new Promise((r) => n2.proc.once("exit", r));
    process.kill(n2.pid, "SIGKILL");
    const t0 = Date.now();
    await withTimeout(exited, 3000, "node 2 to die on SIGKILL");
    // node 2's clients stop trying to reconnect
    const dead = clients.filter((c) => c.node === 1);
    for (const c of dead) {
      pool.splice(pool.indexOf(c.socket), 1);
      c.socket.disconnect();
    }

    // first time each survivor's list lost one of node 2's users; when it lost both
    const firstDrop = new Map();
    const allGone = new Map();
    const watch = setInterval(() => {
      const now = Date.now() - t0;
      for (const c of survivors) {
        const keys = listKeys(c);
        if (!firstDrop.has(c) && gone.some((u) => !keys.includes(u))) firstDrop.set(c, now);
        if (!allGone.has(c) && JSON.stringify(keys) === JSON.stringify(remaining)) allGone.set(c, now);
      }
    }, 5);
    try {
      // broadcasts from node 1 during the down period, while node 2 is still listed
      const before = survivors.map((c) => c.msgs.items.length);
      for (let n = 200; n < 205; n++) clients[0].channel.push("new_msg", { n });
      await Promise.all(survivors.map((c, i) => c.msgs.atLeast(before[i] + 5, 3000))).catch((e) => {
        throw new Error(`${e.message}\n${dump(survivors)}`);
      });
      for (const [i, c] of survivors.entries()) {
        assert.deepEqual(nOf(c).slice(before[i]), [200, 201, 202, 203, 204], `${c.sub}: node 1's broadcasts after the kill`);
      }
      const duringMs = Date.now() - t0;

      await waitFor(
        () => survivors.every((c) => allGone.has(c)),
        `node 2's users (${gone}) to leave every surviving client's list (${LEAVE_WITHIN_MS} ms after the kill)`,
        Math.max(0, LEAVE_WITHIN_MS - (Date.now() - t0)),
        10,
      ).catch((e) => {
        throw new Error(`${e.message}\n${dump(survivors)}`);
      });
      for (const c of survivors) {
        assert.ok(
          firstDrop.get(c) >= LEAVE_NOT_BEFORE_MS,
          `${c.sub} saw node 2's users leave ${firstDrop.get(c)} ms after the kill: before the down period (${DOWN_PERIOD_MS} ms)`,
        );
        assert.ok(allGone.get(c) <= LEAVE_WITHIN_MS, `${c.sub}: both left after ${allGone.get(c)} ms`);
      }
      assert.ok(
        duringMs < LEAVE_NOT_BEFORE_MS,
        `the broadcasts after the kill were checked within the down period (${duringMs} ms)`,
      );
      t.diagnostic(
        `node 2's users left after ${survivors.map((c) => `${c.sub} ${firstDrop.get(c)}-${allGone.get(c)} ms`).join(", ")}`,
      );
    } finally {
      clearInterval(watch);
    }

    // and after the leave: node 1 still reaches everyone left, once, in order
    const before = survivors.map((c) => c.msgs.items.length);
    for (let n = 300; n < 305; n++) clients[0].channel.push("new_msg", { n });
    await Promise.all(survivors.map((c, i) => c.msgs.atLeast(before[i] + 5, 3000))).catch((e) => {
      throw new Error(`${e.message}\n${dump(survivors)}`);
    });
    await sleep(QUIET_MS);
    for (const [i, c] of survivors.entries()) {
      assert.deepEqual(nOf(c).slice(before[i]), [300, 301, 302, 303, 304], `${c.sub}: node 1's broadcasts after the leave`);
      assert.deepEqual(listKeys(c), remaining, `${c.sub}'s list after the leave`);
    }
  });
});
