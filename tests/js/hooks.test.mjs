// HTTP hooks to a real backend process (fixtures/backend.mjs): the connect hook refuses or
// names sockets, the join hook allows with a reply payload phoenix.js receives or refuses with
// the backend's reason, the push hook answers and says whether to broadcast. A backend that
// takes 5 s: the joins waiting on it time out cleanly at 2 s while other sockets on the same core
// keep heartbeating fast; a core's in-flight bound refuses at once; a backend that is down opens
// the circuit (in /metrics and the log).

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import net from "node:net";
import http from "node:http";
import {
  startServerToml,
  newSocket,
  connectSocket,
  joinOk,
  pushResult,
  collect,
  closeAll,
  rawConnect,
  refusedStatus,
  closeRaw,
  httpRequest,
  mintToken,
  waitFor,
  withTimeout,
  sleep,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));

/** Start fixtures/backend.mjs; resolves {port, seen(), stop()}. */
async function startBackend() {
  const proc = spawn(process.execPath, [join(here, "fixtures", "backend.mjs")], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      proc.stdout.setEncoding("utf8");
      proc.stdout.once("data", (d) => {
        const m = /backend listening (\d+)/.exec(d);
        m ? resolve(Number(m[1])) : reject(new Error(`backend said ${d}`));
      });
      proc.once("exit", (c) => reject(new Error(`backend exited ${c}`)));
    }),
    5000,
    "the backend to listen",
  );
  return {
    port,
    async seen() {
      return JSON.parse((await httpRequest({ port }, "GET", "/seen")).body);
    },
    stop() {
      proc.kill("SIGKILL");
    },
  };
}

/** A port nothing listens on. */
async function deadPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

function hooksToml(port, extra = "", connect = true) {
  return `auth_secret = "k"
[hooks]
${connect ? `connect_url = "http://127.0.0.1:${port}/connect"` : ""}
join_url = "http://127.0.0.1:${port}/join"
push_url = "http://127.0.0.1:${port}/push"
join_topics = ["room:*"]
push_topics = ["room:*"]
${extra}
`;
}

const p99 = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
};

describe("backend hooks", { timeout: SUITE_TIMEOUT_MS }, () => {
  let backend;
  const servers = [];
  const sockets = [];
  const raws = [];
  before(async () => {
    backend = await startBackend();
  });
  after(async () => {
    closeRaw(raws);
    await closeAll(sockets);
    for (const s of servers) await s.stop();
    backend?.stop();
  });
  async function serve(toml, cores = 2) {
    const s = await startServerToml(toml, { cores });
    servers.push(s);
    return s;
  }

  test("join: room:ok allowed with the backend's reply, room:no refused with its reason; topics outside join_topics skip the hook", async () => {
    const server = await serve(hooksToml(backend.port));
    const token = await mintToken(["--secret", "k", "--sub", "alice", "--ttl-secs", "60", "--info", '{"plan":"pro"}']);
    const s = newSocket(server, { params: { token } }, sockets);
    await connectSocket(s);
    const ok = await joinOk(s.channel("room:ok", {}));
    assert.equal(ok.welcome, true);
    assert.equal(ok.subject, "alice", "the token's subject");
    assert.deepEqual(ok.info, { via: "connect" }, "the connect hook replaced the token's info");
    assert.equal(ok.v, 1);
    assert.match(ok.client, /^127\.0\.0\.1:\d+$/);
    assert.equal(typeof ok.node, "string");
    const no = await pushResult(s.channel("room:no", {}).join());
    assert.deepEqual(no, { status: "error", response: { reason: "not on the list" } });
    // `lobby` is not in join_topics: the default handler, no hook.
    await joinOk(s.channel("lobby", {}));
    const seen = await backend.seen();
    assert.equal(seen.join.topic, "room:no");
    assert.equal(seen.join.event, "phx_join");
  });

  test("connect: the backend refuses (403 with its reason) or sets the subject and socket id", async () => {
    const server = await serve(hooksToml(backend.port));
    assert.equal(await refusedStatus(server, "/socket/websocket?vsn=2.0.0&deny=1"), 403);
    await waitFor(() => /refused by the connect hook/.test(server.stderr), "the refusal in the log");
    const s = newSocket(server, { params: { user: "bob" } }, sockets);
    await connectSocket(s);
    const ok = await joinOk(s.channel("room:ok", {}));
    assert.equal(ok.subject, "hooked:bob");
    assert.equal((await backend.seen()).join.socket_id, "sock:bob");
    // The socket id it set is the one POST /api/disconnect closes.
    const r = await httpRequest(server, "POST", "/api/disconnect", { body: { id: "sock:bob" } });
    assert.equal(r.status, 202);
    await waitFor(() => s.events.close.length > 0, "the socket to be closed by its id");
  });

  test("push: answered by the backend, broadcast (rewritten) or not, refused", async () => {
    const server = await serve(hooksToml(backend.port));
    const s = newSocket(server, {}, sockets);
    const other = newSocket(server, {}, sockets);
    await connectSocket(s);
    await connectSocket(other);
    const ch = s.channel("room:chat", {});
    const och = other.channel("room:chat", {});
    await joinOk(ch);
    await joinOk(och);
    const shouts = collect(och, "shout");
    const asks = collect(och, "ask");
    assert.deepEqual(await pushResult(ch.push("shout", { text: "hi" })), { status: "ok", response: { heard: { text: "hi" } } });
    assert.deepEqual((await shouts.atLeast(1))[0], { text: "HI" }, "the backend's rewrite was broadcast");
    assert.deepEqual(await pushResult(ch.push("ask", {})), { status: "ok", response: { answer: 42 } });
    assert.deepEqual(await pushResult(ch.push("deny", {})), { status: "error", response: { reason: "nope" } });
    await sleep(200);
    assert.equal(asks.items.length, 0, "not broadcast");
  });

  test("a binary push goes to the backend in base64 and, broadcast, reaches the topic as binary", async () => {
    const server = await serve(hooksToml(backend.port, "", false));
    const a = await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws });
    const b = await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws });
    for (const c of [a, b]) {
      c.send(["1", "1", "room:bin", "phx_join", {}]);
      assert.equal((await c.reply("1"))[4].status, "ok");
    }
    const enc = (s) => Buffer.from(s, "utf8");
    const [jr, ref, topic, event, payload] = [enc("1"), enc("2"), enc("room:bin"), enc("bin"), Buffer.from([1, 2, 3, 255])];
    a.send(new Uint8Array(Buffer.concat([Buffer.from([0, jr.length, ref.length, topic.length, event.length]), jr, ref, topic, event, payload])));
    const got = await b.next((m) => m.binary, "the binary broadcast");
    assert.deepEqual([...got.binary.slice(-4)], [1, 2, 3, 255]);
    assert.equal((await backend.seen()).push.payload_base64, Buffer.from([1, 2, 3, 255]).toString("base64"));
  });

  test("messages behind a pending join keep their order", async () => {
    const server = await serve(hooksToml(backend.port));
    const c = await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws });
    c.send(["1", "1", "room:ok", "phx_join", {}]);
    c.send(["1", "2", "room:ok", "ask", {}]);
    c.send([null, "3", "phoenix", "heartbeat", {}]);
    await waitFor(() => c.messages.length >= 3, "three replies");
    assert.deepEqual(c.messages.slice(0, 3).map((m) => [m[1], m[4].status]), [["1", "ok"], ["2", "ok"], ["3", "ok"]]);
    assert.deepEqual(c.messages[1][4].response, { answer: 42 });
  });

  test("a backend that takes 5 s: joins time out at 2 s, other sockets on the core heartbeat fast meanwhile; the in-flight bound refuses at once", async () => {
    const server = await serve(hooksToml(backend.port, "max_in_flight_per_core = 20\ncircuit_failures = 1000", false), 1);
    const waiting = [];
    for (let i = 0; i < 20; i++) waiting.push(await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws }));
    const beaters = [];
    for (let i = 0; i < 10; i++) beaters.push(await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws }));
    const t0 = Date.now();
    waiting.forEach((c, i) => c.send(["1", "j", `room:slow`, "phx_join", { i }]));
    await sleep(100);
    // The core has 20 hooks out: one more is refused at once.
    const extra = await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws });
    const tx = Date.now();
    extra.send(["1", "x", "room:slow", "phx_join", {}]);
    const busy = await extra.reply("x", 1000);
    assert.deepEqual(busy[4], { status: "error", response: { reason: "too many pending hooks" } });
    assert.ok(Date.now() - tx < 500, "refused at once");
    // Heartbeats on the same core while the 20 joins wait.
    const rtts = [];
    let ref = 0;
    while (Date.now() - t0 < 1800) {
      await Promise.all(
        beaters.map(async (c) => {
          const r = `h${ref++}`;
          const sent = performance.now();
          c.send([null, r, "phoenix", "heartbeat", {}]);
          await c.reply(r, 1000);
          rtts.push(performance.now() - sent);
        }),
      );
      await sleep(10);
    }
    const replies = await Promise.all(waiting.map((c) => c.reply("j", 4000)));
    const took = Date.now() - t0;
    for (const r of replies) assert.deepEqual(r[4], { status: "error", response: { reason: "join timed out" } });
    assert.ok(took >= 1900 && took < 3500, `timed out after ${took} ms`);
    const worst = p99(rtts);
    console.log(`# heartbeat rtt while 20 joins wait on a 5 s backend: n=${rtts.length} p99=${worst.toFixed(2)} ms`);
    assert.ok(rtts.length > 200, `${rtts.length} samples`);
    assert.ok(worst < 50, `heartbeat p99 ${worst} ms`);
    // The sockets that waited are alive and work.
    waiting[0].send([null, "after", "phoenix", "heartbeat", {}]);
    assert.equal((await waiting[0].reply("after"))[4].status, "ok");
    const m = (await httpRequest(server, "GET", "/metrics")).body;
    assert.match(m, /corecast_hook_timeouts_total\{hook="join"\} 20\b/);
    assert.match(m, /corecast_hook_busy_total\{hook="join"\} 1\b/);
  });

  /** A server whose join hook is the backend on `port`, with a circuit of 3 failures (open for
   * a minute); one socket asks six joins in turn. Resolves {server, replies (each join reply's
   * payload), metrics (the /metrics text after them)}. */
  async function sixJoinsThroughACircuitOfThree(port) {
    const server = await serve(`[hooks]
join_url = "http://127.0.0.1:${port}/join"
circuit_failures = 3
circuit_open_ms = 60000
`);
    const c = await rawConnect(server, "/socket/websocket?vsn=2.0.0", { pool: raws });
    const replies = [];
    for (let i = 0; i < 6; i++) {
      c.send([`${i}`, `${i}`, `room:${i}`, "phx_join", {}]);
      replies.push((await c.reply(`${i}`))[4]);
    }
    const metrics = (await httpRequest(server, "GET", "/metrics")).body;
    return { server, replies, metrics };
  }

  test("a backend that is down: joins fail, the circuit opens (metrics, log) and later joins fail at once", async () => {
    const { server, replies, metrics: m } = await sixJoinsThroughACircuitOfThree(await deadPort());
    for (const r of replies) {
      assert.deepEqual(r, { status: "error", response: { reason: "join hook unavailable" } });
    }
    assert.match(m, /corecast_hook_circuit_open\{hook="join"\} 1\b/);
    assert.match(m, /corecast_hook_circuit_opens_total\{hook="join"\} 1\b/);
    assert.match(m, /corecast_hook_short_circuited_total\{hook="join"\} 3\b/);
    await waitFor(() => /circuit opened/.test(server.stderr), "the open circuit in the log");
  });

  test("a backend that answers 200 with something other than a JSON object counts as failing: the circuit opens", async () => {
    // An HTML error page from a misconfigured proxy in front of the backend, say.
    const html = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "text/html" });
        res.end("<html>upstream error</html>");
      });
    });
    await new Promise((r) => html.listen(0, "127.0.0.1", r));
    try {
      const { replies, metrics: m } = await sixJoinsThroughACircuitOfThree(html.address().port);
      assert.deepEqual(
        replies.map((r) => r.status),
        Array(6).fill("error"),
      );
      assert.deepEqual(
        replies.map((r) => r.response.reason),
        [
          "join hook answered badly",
          "join hook answered badly",
          "join hook answered badly",
          "join hook unavailable",
          "join hook unavailable",
          "join hook unavailable",
        ],
      );
      assert.match(m, /corecast_hook_failures_total\{hook="join"\} 3\b/);
      assert.match(m, /corecast_hook_circuit_open\{hook="join"\} 1\b/);
      assert.match(m, /corecast_hook_short_circuited_total\{hook="join"\} 3\b/);
    } finally {
      html.closeAllConnections();
      await new Promise((r) => html.close(r));
    }
  });
});
