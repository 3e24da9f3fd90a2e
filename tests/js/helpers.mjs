// Shared helpers for the real-client tests: start/stop a corecast server, mint tokens,
// open phoenix.js sockets (over the `ws` package) and raw `ws` connections, and wait for
// things with a bound. Every wait here has a timeout and fails with a message that says
// what was awaited.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import { Socket } from "phoenix";
import WebSocket from "ws";

export { Socket, WebSocket };

/** Default bound for a single wait (join reply, push reply, broadcast, ...). */
export const WAIT_MS = 3000;

export function corecastBin() {
  const bin = process.env.CORECAST_BIN;
  if (!bin) {
    throw new Error("CORECAST_BIN is not set (run scripts/js-tests.sh, or export it)");
  }
  return bin;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Race a promise against a timer; rejects with `what` on timeout. */
export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Poll `pred` (sync or async) every `every` ms until truthy; throws after `ms`. */
export async function waitFor(pred, what, ms = WAIT_MS, every = 20) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

// ---------------------------------------------------------------------------------------------
// Server process

/** Render a flat object as TOML (strings, numbers, booleans, arrays of strings). */
function toToml(config) {
  const lines = [];
  for (const [k, v] of Object.entries(config)) {
    lines.push(`${k} = ${JSON.stringify(v)}`);
  }
  return lines.join("\n") + "\n";
}

// Never leave a server behind: kill any still running when this test process exits or is
// interrupted (after() hooks stop them normally).
const liveServers = new Set();
function killLiveServers() {
  for (const s of liveServers) {
    try {
      s.proc.kill("SIGKILL");
    } catch {}
  }
  liveServers.clear();
}
process.on("exit", killLiveServers);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(sig, () => {
    killLiveServers();
    process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]);
  });
}

/** Bound for a whole test file's suite (hooks included); each wait inside has its own. */
export const SUITE_TIMEOUT_MS = 60000;

/**
 * Start `corecast serve --listen 127.0.0.1:0 --cores 2 --config <tmp>` and wait for its
 * "corecast listening on 127.0.0.1:PORT (2 cores)" line. Returns {port, wsUrl, httpUrl, stop}.
 */
export async function startServer(config = {}, { cores = 2, startTimeoutMs = 10000 } = {}) {
  return launchServer(toToml(config), config, { cores, startTimeoutMs });
}

/**
 * Like startServer, but the config file is `tomlText` as given (tables such as `[cluster]`
 * included). Returns the same object ({proc, pid, port, wsUrl, httpUrl, stderr, stop}); its
 * `config` is the text.
 */
export async function startServerToml(tomlText, { cores = 2, startTimeoutMs = 10000 } = {}) {
  return launchServer(tomlText, tomlText, { cores, startTimeoutMs });
}

async function launchServer(configText, config, { cores, startTimeoutMs }) {
  const dir = mkdtempSync(join(tmpdir(), "corecast-js-"));
  const cfgPath = join(dir, "corecast.toml");
  writeFileSync(cfgPath, configText);
  const args = ["serve", "--listen", "127.0.0.1:0", "--cores", String(cores), "--config", cfgPath];
  const proc = spawn(corecastBin(), args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (d) => {
    stderr += d;
    if (stderr.length > 64 * 1024) stderr = stderr.slice(-32 * 1024);
  });
  const server = {
    proc,
    pid: proc.pid,
    config,
    port: 0,
    get stderr() {
      return stderr;
    },
    async stop() {
      liveServers.delete(server);
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const ok = await withTimeout(exited, 3000, "corecast to exit on SIGTERM").then(
          () => true,
          () => false,
        );
        if (!ok) {
          process.stderr.write(`corecast (pid ${proc.pid}) ignored SIGTERM for 3 s; sending SIGKILL\n`);
          proc.kill("SIGKILL");
          await withTimeout(exited, 2000, "corecast to exit on SIGKILL").catch(() => {});
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  liveServers.add(server);

  const port = await withTimeout(
    new Promise((resolve, reject) => {
      let out = "";
      proc.stdout.setEncoding("utf8");
      const onData = (d) => {
        out += d;
        const nl = out.indexOf("\n");
        if (nl < 0) return;
        const first = out.slice(0, nl);
        proc.stdout.off("data", onData);
        proc.stdout.resume(); // keep draining anything else it prints
        const m = /^corecast listening on 127\.0\.0\.1:(\d+) \((\d+) cores\)\s*$/.exec(first);
        if (!m) reject(new Error(`unexpected first stdout line from corecast: ${JSON.stringify(first)}`));
        else if (Number(m[2]) !== cores) reject(new Error(`server reports ${m[2]} cores, asked for ${cores}: ${first}`));
        else resolve(Number(m[1]));
      };
      proc.stdout.on("data", onData);
      proc.once("error", (e) => reject(new Error(`cannot start ${corecastBin()}: ${e.message}`)));
      proc.once("exit", (code, sig) =>
        reject(new Error(`corecast exited (code ${code}, signal ${sig}) before listening; stderr:\n${stderr}`)),
      );
    }),
    startTimeoutMs,
    "corecast to print its listening line",
  ).catch(async (e) => {
    await server.stop();
    throw e;
  });
  // the server has read its config by the time it listens: the file is no longer needed
  rmSync(dir, { recursive: true, force: true });
  server.port = port;
  server.wsUrl = `ws://127.0.0.1:${port}/socket`;
  server.httpUrl = `http://127.0.0.1:${port}`;
  return server;
}

/** `corecast token ...args` -> the token (first stdout line, trimmed). */
export function mintToken(args) {
  return new Promise((resolve, reject) => {
    execFile(corecastBin(), ["token", ...args], { timeout: 5000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`corecast token ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      const tok = stdout.split("\n")[0].trim();
      if (!tok) return reject(new Error(`corecast token ${args.join(" ")} printed nothing`));
      resolve(tok);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP (one connection per request: no keep-alive, so no idle HTTP connection is left
// open to be counted as a server connection)

export function httpRequest(server, method, path, { headers = {}, body } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
      const h = { Connection: "close", ...headers };
      if (data !== undefined) {
        h["Content-Type"] = h["Content-Type"] || "application/json";
        h["Content-Length"] = Buffer.byteLength(data);
      }
      const req = http.request(
        { host: "127.0.0.1", port: server.port, method, path, headers: h, agent: false },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d) => (text += d));
          res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: text }));
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      if (data !== undefined) req.write(data);
      req.end();
    }),
    WAIT_MS,
    `HTTP ${method} ${path}`,
  );
}

/**
 * GET /metrics and parse every per-core series `name{core="N"} V` -> {series: {name: {N: V}}, text}.
 */
export async function metricsSnapshot(server) {
  const res = await httpRequest(server, "GET", "/metrics");
  if (res.status !== 200) throw new Error(`GET /metrics -> ${res.status}: ${res.body}`);
  const series = {};
  const re = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{core="(\d+)"\}\s+(\d+(?:\.\d+)?)\s*$/gm;
  let m;
  while ((m = re.exec(res.body))) (series[m[1]] ||= {})[m[2]] = Number(m[3]);
  return { series, text: res.body };
}

// ---------------------------------------------------------------------------------------------
// phoenix.js sockets

/**
 * A phoenix.js Socket over the `ws` package, with records of its open/error/close events.
 * Registered in `pool` so that closeAll() can disconnect it.
 */
export function newSocket(server, opts = {}, pool) {
  const socket = new Socket(server.wsUrl, {
    transport: WebSocket,
    timeout: WAIT_MS,
    // no fast reconnect storms against a server that refuses us
    reconnectAfterMs: () => 500,
    rejoinAfterMs: () => 1000,
    ...opts,
  });
  socket.events = { open: 0, error: [], close: [] };
  socket.onOpen(() => socket.events.open++);
  socket.onError((e) => socket.events.error.push(e));
  socket.onClose((e) => socket.events.close.push(e));
  if (pool) pool.push(socket);
  return socket;
}

/** Connect and wait until open; fails if the transport errors or closes first. */
export async function connectSocket(socket, ms = WAIT_MS) {
  const errorsBefore = socket.events.error.length;
  const closesBefore = socket.events.close.length;
  socket.connect();
  await waitFor(
    () => {
      if (socket.isConnected()) return true;
      if (socket.events.error.length > errorsBefore || socket.events.close.length > closesBefore) {
        const e = socket.events.error[socket.events.error.length - 1];
        const c = socket.events.close[socket.events.close.length - 1];
        throw new Error(
          `phoenix socket failed to open: error=${e && (e.message || e.type)} close=${c && c.code}`,
        );
      }
      return false;
    },
    "phoenix socket to open",
    ms,
    10,
  );
  return socket;
}

/** Resolve with {status, response} of a phoenix.js Push (ok/error/timeout), bounded. */
export function pushResult(push, ms = WAIT_MS, what = "a reply") {
  return withTimeout(
    new Promise((resolve) => {
      push
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    }),
    ms + 500,
    what,
  );
}

/** channel.join() and require "ok". */
export async function joinOk(channel) {
  const r = await pushResult(channel.join(), WAIT_MS, `join reply for ${channel.topic}`);
  if (r.status !== "ok") {
    throw new Error(`join ${channel.topic} -> ${r.status} ${JSON.stringify(r.response)}`);
  }
  return r.response;
}

/** Collects events of one name on a channel: {items, next(ms)}. */
export function collect(channel, event) {
  const items = [];
  const waiters = [];
  channel.on(event, (payload) => {
    items.push(payload);
    while (waiters.length && waiters[0].n <= items.length) waiters.shift().resolve();
  });
  return {
    items,
    /** Wait until at least n items have arrived. */
    async atLeast(n, ms = WAIT_MS) {
      if (items.length >= n) return items;
      await withTimeout(
        new Promise((resolve) => waiters.push({ n, resolve })),
        ms,
        `${n} "${event}" event(s) on ${channel.topic} (got ${items.length})`,
      );
      return items;
    },
  };
}

/** Disconnect every socket in the pool (bounded). */
export async function closeAll(pool) {
  const sockets = pool.splice(0);
  await Promise.all(
    sockets.map((s) =>
      withTimeout(new Promise((r) => s.disconnect(r)), 3000, "socket disconnect").catch(() => {}),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Raw ws connections speaking V2 JSON by hand

/**
 * Open a raw ws to `path` (default the V2 socket URL). Resolves with a RawClient once open;
 * rejects with {status} (HTTP status of a refused upgrade) or the error.
 */
export function rawConnect(server, path = "/socket/websocket?vsn=2.0.0", { protocols, pool } = {}) {
  const url = `ws://127.0.0.1:${server.port}${path}`;
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, protocols);
      ws.binaryType = "arraybuffer";
      const client = new RawClient(ws);
      if (pool) pool.push(client);
      ws.once("open", () => resolve(client));
      ws.once("unexpected-response", (req, res) => {
        const err = new Error(`upgrade refused with HTTP ${res.statusCode}`);
        err.status = res.statusCode;
        res.resume();
        req.destroy();
        reject(err);
      });
      ws.once("error", (e) => reject(e));
    }),
    WAIT_MS,
    `raw ws to ${path} to open`,
  );
}

/** HTTP status with which an upgrade to `path` is refused (throws if it opens). */
export async function refusedStatus(server, path, opts = {}) {
  try {
    const c = await rawConnect(server, path, opts);
    c.terminate();
  } catch (e) {
    if (e.status) return e.status;
    throw e;
  }
  throw new Error(`upgrade to ${path} was accepted, expected it to be refused`);
}

export class RawClient {
  constructor(ws) {
    this.ws = ws;
    this.messages = []; // decoded: arrays for text frames, {binary: Uint8Array} for binary
    this.closed = null; // {code, reason, at}
    this.waiters = [];
    ws.on("message", (data, isBinary) => {
      let msg;
      if (isBinary) msg = { binary: new Uint8Array(data) };
      else {
        try {
          msg = JSON.parse(data.toString("utf8"));
        } catch {
          msg = { unparsable: data.toString("utf8") };
        }
      }
      this.messages.push(msg);
      this._wake();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString(), at: Date.now() };
      this._wake();
    });
    ws.on("error", () => {}); // surfaced through `closed`
  }
  _wake() {
    for (const w of this.waiters.slice()) w();
  }
  send(arr) {
    this.ws.send(typeof arr === "string" || arr instanceof Uint8Array ? arr : JSON.stringify(arr));
  }
  /** Wait for (and remove) the first message satisfying pred. */
  async next(pred, what, ms = WAIT_MS) {
    let found;
    const check = () => {
      const i = this.messages.findIndex(pred);
      if (i >= 0) {
        found = this.messages.splice(i, 1)[0];
        return true;
      }
      return false;
    };
    if (check()) return found;
    let wake;
    try {
      await withTimeout(
        new Promise((resolve, reject) => {
          wake = () => {
            if (check()) resolve();
            else if (this.closed) reject(new Error(`connection closed (${this.closed.code}) while waiting for ${what}`));
          };
          this.waiters.push(wake);
          wake();
        }),
        ms,
        `${what}; received meanwhile: ${JSON.stringify(this.messages)}`,
      );
    } finally {
      this.waiters = this.waiters.filter((w) => w !== wake);
    }
    return found;
  }
  /** Wait for the reply with ref `ref`. */
  reply(ref, ms = WAIT_MS) {
    return this.next((m) => Array.isArray(m) && m[1] === ref && m[3] === "phx_reply", `phx_reply with ref ${ref}`, ms);
  }
  async waitClosed(ms) {
    await waitFor(() => this.closed, "the server to close the connection", ms, 10);
    return this.closed;
  }
  terminate() {
    this.ws.terminate();
  }
}

export function closeRaw(pool) {
  for (const c of pool.splice(0)) c.terminate();
}
