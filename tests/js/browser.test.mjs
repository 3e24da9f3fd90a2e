// phoenix.js in a real browser (issue 14): Debian's chromium, headless, driven by puppeteer-core,
// loads a page that uses the browser bundle shipped in the phoenix npm package; over WebSocket
// and over long-poll (cross-origin, so through the CORS preflight)
// it joins, pushes (and gets its reply), receives a broadcast a Node client made, and its
// Presence lists both. `make test` installs chromium when it is missing.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { Presence } from "phoenix";
import {
  startServer,
  newSocket,
  connectSocket,
  joinOk,
  collect,
  closeAll,
  pushResult,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BUNDLE = path.join(here, "node_modules/phoenix/priv/static/phoenix.js");

function chromiumPath() {
  for (const p of [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (p && fs.existsSync(p)) return p;
  }
  throw new Error("chromium is not installed: `make test` installs it (apt-get install chromium)");
}

// The page: phoenix.js from its browser bundle (the `Phoenix` global), as an app would load it.
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>corecast browser test</title>
<script src="/phoenix.js"></script></head><body><pre id="log"></pre><script>
  const params = new URLSearchParams(location.search);
  window.state = { open: false, joined: false, replies: [], received: [], presence: [], errors: [] };
  const opts = params.get("lp") ? { transport: Phoenix.LongPoll } : {};
  const socket = new Phoenix.Socket(params.get("ws"), { params: {}, ...opts });
  window.transportName = () => socket.transport.name || String(socket.transport).slice(0, 20);
  window.isLongPoll = () => socket.transport === Phoenix.LongPoll;
  socket.onOpen(() => (state.open = true));
  socket.onError((e) => state.errors.push(String(e && e.message || e)));
  socket.connect();
  const channel = socket.channel(params.get("topic") || "room:browser", {});
  const presence = new Phoenix.Presence(channel);
  presence.onSync(() => (state.presence = presence.list((key) => key)));
  channel.on("new_msg", (p) => state.received.push(p));
  channel.join().receive("ok", () => (state.joined = true));
  window.pushMsg = (body) => new Promise((resolve) => {
    channel.push("new_msg", { body }).receive("ok", (r) => { state.replies.push(r); resolve("ok"); })
      .receive("error", () => resolve("error")).receive("timeout", () => resolve("timeout"));
  });
</script></body></html>`;

describe("phoenix.js in a real browser (chromium)", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  let pages;
  let browser;
  const sockets = [];

  before(async () => {
    server = await startServer({ presence: ["room:*"], presence_anonymous: true, dashboard: true });
    pages = http.createServer((req, res) => {
      if (req.url.startsWith("/phoenix.js")) {
        res.writeHead(200, { "Content-Type": "application/javascript" });
        res.end(fs.readFileSync(BUNDLE));
      } else {
        res.writeHead(200, { "Content-Type": "text/html" });
        res.end(PAGE);
      }
    });
    await new Promise((r) => pages.listen(0, "127.0.0.1", r));
    browser = await puppeteer.launch({
      executablePath: chromiumPath(),
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
  });

  after(async () => {
    if (browser) await browser.close();
    if (pages) pages.close();
    await closeAll(sockets);
    if (server) await server.stop();
  });

  /** The page over WebSocket or (`lp`) long-poll (cross-origin: the page is on another port,
   * so long-poll's POSTs go through the CORS preflight). */
  async function roundTrip(lp) {
    const page = await browser.newPage();
    const topic = lp ? "room:browser-lp" : "room:browser";
    const url =
      `http://127.0.0.1:${pages.address().port}/?ws=${encodeURIComponent(server.wsUrl)}` +
      `&topic=${topic}` + (lp ? "&lp=1" : "");
    await page.goto(url);
    await page.waitForFunction(() => window.state && window.state.joined, { timeout: 10000 });
    assert.equal(await page.evaluate(() => window.isLongPoll()), lp);

    // A Node phoenix.js client in the same topic.
    const node = newSocket(server, {}, sockets);
    await connectSocket(node);
    const ch = node.channel(topic, {});
    const nodePresence = new Presence(ch);
    await joinOk(ch);
    const seenByNode = collect(ch, "new_msg");

    // The browser pushes; its reply comes back; the Node client gets the broadcast.
    assert.equal(await page.evaluate(() => window.pushMsg("from the browser")), "ok");
    await seenByNode.atLeast(1);
    assert.equal(seenByNode.items[0].body, "from the browser");

    // The Node client pushes; the browser receives it.
    assert.equal((await pushResult(ch.push("new_msg", { body: "from node" }))).status, "ok");
    await page.waitForFunction(
      () => window.state.received.some((p) => p.body === "from node"),
      { timeout: 5000 },
    );

    // Presence: both members in the browser's list and in the Node client's.
    await page.waitForFunction(() => window.state.presence.length === 2, { timeout: 5000 });
    const deadline = Date.now() + 5000;
    while (nodePresence.list().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(nodePresence.list().length, 2);
    const errors = await page.evaluate(() => window.state.errors);
    assert.deepEqual(errors, []);
    await page.close();
  }

  test("over WebSocket: joins, pushes, receives a Node client's broadcast, sees presence", async () => {
    await roundTrip(false);
  });

  test("over long-poll: joins, pushes, receives a Node client's broadcast, sees presence", async () => {
    await roundTrip(true);
  });

  test("the dashboard in the same browser: its numbers follow live traffic; a screenshot is kept", async () => {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    await page.goto(`${server.httpUrl}/dashboard`);
    const number = (id) => page.$eval(id, (e) => Number(e.textContent.replace(/[^0-9.]/g, "")) || 0);
    await page.waitForFunction(() => document.querySelector("#v-conn") && /\d/.test(document.querySelector("#v-conn").textContent), { timeout: 10000 });
    const connBefore = await number("#v-conn");

    // Live traffic: 12 members on a topic, a broadcast every 100 ms for 4 s.
    const members = [];
    for (let i = 0; i < 12; i++) {
      const s = newSocket(server, {}, sockets);
      await connectSocket(s);
      const c = s.channel("room:dash", {});
      await joinOk(c);
      members.push(c);
    }
    let deliveriesSeen = 0;
    for (let i = 0; i < 40; i++) {
      await pushResult(members[i % members.length].push("new_msg", { i }));
      await new Promise((r) => setTimeout(r, 100));
      deliveriesSeen = Math.max(deliveriesSeen, await number("#v-deliv"));
    }
    // The earlier cases' sockets and long-poll sessions may still be closing or expiring, so the
    // count before is not a floor: the 12 members are open now, and once they close the number
    // falls by at least 12 (nothing else opens meanwhile).
    const connAfter = await number("#v-conn");
    assert.ok(connAfter >= 12, `connections ${connBefore} -> ${connAfter} with 12 members open`);
    assert.ok(deliveriesSeen > 0, "deliveries/s moved");
    const topics = await page.$eval("#topics", (e) => e.textContent);
    assert.match(topics, /room:dash/);
    const shot = path.join(here, "..", "..", "reports", "dashboard");
    fs.mkdirSync(shot, { recursive: true });
    const file = path.join(shot, `${new Date().toISOString().replace(/[:.]/g, "-")}.png`);
    await page.screenshot({ path: file });
    console.log(`dashboard screenshot: ${file}`);
    for (const c of members) c.socket.disconnect();
    let connClosed = connAfter;
    const until = Date.now() + 8000;
    while (connClosed > connAfter - 12 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 250));
      connClosed = await number("#v-conn");
    }
    assert.ok(connClosed <= connAfter - 12, `connections ${connAfter} -> ${connClosed} after 12 members closed`);
    await page.close();
  });
});
