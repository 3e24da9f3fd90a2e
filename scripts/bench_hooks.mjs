#!/usr/bin/env node
// Joins through `hooks.join_url` (issue 15): how many joins a second a server answers when each
// join asks a trivial backend (tests/js/fixtures/backend.mjs --trivial, one Node process), and
// what the hook adds to a join's latency, against the same joins on topics without the hook,
// same server, same run.
//
//   node scripts/bench_hooks.mjs [--sockets 20] [--secs 5] [--cores 2] [--bin PATH]
//
// One server (`corecast serve`, release build) with `join_topics = ["hooked:*"]`, one backend,
// this one client process: SOCKETS raw WebSockets, each joining a fresh topic, waiting for the
// reply, leaving, again, for SECS seconds per phase: first `plain:*` (no hook), then `hooked:*`,
// then `plain:*` again. Prints joins/s and p50/p99/p999 per phase, and writes
// reports/hooks/<UTC timestamp>/summary.json. The client and the backend share the box's 2 cores
// with the server: the figures are what this box does, a floor for the server alone.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir, cpus, release } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(join(ROOT, "tests", "js", "package.json"));
const WebSocket = require("ws");

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const SOCKETS = Number(arg("sockets", 20));
const SECS = Number(arg("secs", 5));
const CORES = Number(arg("cores", 2));
const BIN = arg("bin", join(process.env.CARGO_TARGET_DIR || join(ROOT, "target"), "release", "corecast"));

function lineOf(proc, re, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    let buf = "";
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", (d) => {
      buf += d;
      const m = re.exec(buf);
      if (m) {
        clearTimeout(t);
        resolve(m);
      }
    });
    proc.once("exit", (c) => reject(new Error(`${what}: exited ${c}`)));
  });
}

const pct = (s, q) => s[Math.min(s.length - 1, Math.floor(s.length * q))];

async function main() {
  const started = [];
  const stopAll = () => started.forEach((p) => p.kill("SIGKILL"));
  process.on("exit", stopAll);
  const backend = spawn(process.execPath, [join(ROOT, "tests/js/fixtures/backend.mjs"), "--trivial"], { stdio: ["ignore", "pipe", "inherit"] });
  started.push(backend);
  const bport = Number((await lineOf(backend, /backend listening (\d+)/, "the backend"))[1]);
  const dir = mkdtempSync(join(tmpdir(), "corecast-bench-hooks-"));
  const cfg = join(dir, "c.toml");
  writeFileSync(
    cfg,
    `max_channels = 10\nmax_messages_per_sec = 0\n[hooks]\njoin_url = "http://127.0.0.1:${bport}/join"\njoin_topics = ["hooked:*"]\nmax_in_flight_per_core = 4096\n`,
  );
  const server = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--cores", String(CORES), "--config", cfg], { stdio: ["ignore", "pipe", "inherit"] });
  started.push(server);
  const port = Number((await lineOf(server, /listening on 127\.0\.0\.1:(\d+)/, "corecast"))[1]);
  rmSync(dir, { recursive: true, force: true });

  const socks = await Promise.all(
    Array.from({ length: SOCKETS }, () =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/socket/websocket?vsn=2.0.0`);
        ws.once("open", () => resolve(ws));
        ws.once("error", reject);
      }),
    ),
  );

  async function phase(prefix) {
    const lat = [];
    let errors = 0;
    const end = Date.now() + SECS * 1000;
    const t0 = performance.now();
    await Promise.all(
      socks.map(
        (ws, i) =>
          new Promise((resolve) => {
            let k = 0;
            let sent = 0;
            const next = () => {
              if (Date.now() >= end) {
                ws.off("message", onMsg);
                return resolve();
              }
              k++;
              sent = performance.now();
              ws.send(JSON.stringify([`${k}`, `j${k}`, `${prefix}:${i}:${k}`, "phx_join", {}]));
            };
            const onMsg = (data) => {
              const m = JSON.parse(data.toString());
              if (m[1] === `j${k}`) {
                lat.push(performance.now() - sent);
                if (m[4].status !== "ok") errors++;
                ws.send(JSON.stringify([`${k}`, `l${k}`, `${prefix}:${i}:${k}`, "phx_leave", {}]));
              } else if (m[1] === `l${k}`) next();
            };
            ws.on("message", onMsg);
            next();
          }),
      ),
    );
    const secs = (performance.now() - t0) / 1000;
    lat.sort((a, b) => a - b);
    const r = {
      topics: `${prefix}:*`,
      joins: lat.length,
      errors,
      joins_per_sec: Math.round(lat.length / secs),
      p50_ms: +pct(lat, 0.5).toFixed(3),
      p99_ms: +pct(lat, 0.99).toFixed(3),
      p999_ms: +pct(lat, 0.999).toFixed(3),
    };
    console.log(JSON.stringify(r));
    return r;
  }

  const plain1 = await phase("plain");
  const hooked = await phase("hooked");
  const plain2 = await phase("plain");
  const plainP99 = Math.max(plain1.p99_ms, plain2.p99_ms);
  const summary = {
    sockets: SOCKETS,
    secs_per_phase: SECS,
    cores: CORES,
    machine: { cpus: cpus().length, model: cpus()[0]?.model, kernel: release(), node: process.version },
    phases: [plain1, hooked, plain2],
    hook_added_p50_ms: +(hooked.p50_ms - Math.max(plain1.p50_ms, plain2.p50_ms)).toFixed(3),
    hook_added_p99_ms: +(hooked.p99_ms - plainP99).toFixed(3),
  };
  console.log(
    `joins through join_url: ${hooked.joins_per_sec}/s (without the hook: ${plain1.joins_per_sec}/s, ${plain2.joins_per_sec}/s); ` +
      `p99 ${hooked.p99_ms} ms vs ${plainP99} ms: the hook adds ${summary.hook_added_p99_ms} ms at p99, ${summary.hook_added_p50_ms} ms at p50`,
  );
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const out = join(ROOT, "reports", "hooks", stamp);
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "summary.json"), JSON.stringify(summary, null, 2) + "\n");
  console.log(`report: ${out}/summary.json`);
  socks.forEach((ws) => ws.terminate());
  stopAll();
  process.exit(hooked.errors + plain1.errors + plain2.errors === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(`bench_hooks: ${e.message}`);
  process.exit(1);
});
