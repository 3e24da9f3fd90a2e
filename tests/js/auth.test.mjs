// Connection tokens (require_token = true): query param `token` and phoenix.js `authToken`
// (the `base64url.bearer.phx.` subprotocol); missing, expired, forged tokens get HTTP 403.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startServer,
  mintToken,
  newSocket,
  connectSocket,
  joinOk,
  pushResult,
  collect,
  closeAll,
  rawConnect,
  refusedStatus,
  closeRaw,
  sleep,
  waitFor,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const SECRET = "s3cret";

/** What phoenix.js sends for `authToken: tok` (btoa without padding). */
function bearerProtocol(tok) {
  return "base64url.bearer.phx." + Buffer.from(tok, "latin1").toString("base64").replace(/=/g, "");
}

/** A phoenix.js socket the server must refuse: it errors, and never opens. */
async function expectPhoenixRefused(socket) {
  socket.connect();
  try {
    await waitFor(() => socket.events.error.length > 0, "phoenix socket onError after a refused upgrade");
    await sleep(300);
    assert.equal(socket.events.open, 0, "socket never opened");
    const msg = String(socket.events.error[0] && (socket.events.error[0].message || socket.events.error[0]));
    assert.match(msg, /403/, `transport error should carry the 403: ${msg}`);
  } finally {
    await new Promise((r) => socket.disconnect(r));
  }
}

describe("token auth", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];
  const raws = [];
  let good, expired, forged;

  before(async () => {
    server = await startServer({ auth_secret: SECRET, require_token: true });
    good = await mintToken(["--secret", SECRET, "--sub", "alice", "--ttl-secs", "60"]);
    const past = Math.floor(Date.now() / 1000) - 3600;
    expired = await mintToken(["--secret", SECRET, "--sub", "alice", "--exp-unix", String(past)]);
    forged = await mintToken(["--secret", "not-the-secret", "--sub", "alice", "--ttl-secs", "60"]);
  });

  after(async () => {
    closeRaw(raws);
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test("corecast token prints one token line", () => {
    assert.match(good, /^\S+$/);
    assert.notEqual(good, expired);
  });

  test("no token: HTTP 403 at the upgrade, phoenix.js never opens", async () => {
    assert.equal(await refusedStatus(server, "/socket/websocket?vsn=2.0.0"), 403);
    await expectPhoenixRefused(newSocket(server, {}, sockets));
  });

  test("valid token as params {token}: connects, joins, pushes", async () => {
    const s = newSocket(server, { params: { token: good } }, sockets);
    assert.equal(new URL(s.endPointURL()).searchParams.get("token"), good);
    await connectSocket(s);
    const ch = s.channel("room:auth", {});
    await joinOk(ch);
    const g = collect(ch, "new_msg");
    assert.equal((await pushResult(ch.push("new_msg", { body: "authed" }))).status, "ok");
    assert.deepEqual((await g.atLeast(1))[0], { body: "authed" });
  });

  test("valid token as authToken (subprotocol): connects, server answers protocol phoenix", async () => {
    const s = newSocket(server, { authToken: good }, sockets);
    await connectSocket(s);
    assert.equal(s.conn.protocol, "phoenix", "Sec-WebSocket-Protocol chosen by the server");
    await joinOk(s.channel("room:auth2", {}));
  });

  test("expired token: 403 as query param and as subprotocol", async () => {
    assert.equal(
      await refusedStatus(server, `/socket/websocket?vsn=2.0.0&token=${encodeURIComponent(expired)}`),
      403,
    );
    assert.equal(
      await refusedStatus(server, "/socket/websocket?vsn=2.0.0", { protocols: ["phoenix", bearerProtocol(expired)] }),
      403,
    );
    await expectPhoenixRefused(newSocket(server, { params: { token: expired } }, sockets));
    await expectPhoenixRefused(newSocket(server, { authToken: expired }, sockets));
  });

  test("token signed with another secret, or garbage: 403", async () => {
    for (const tok of [forged, "garbage", good.slice(0, -2), ""]) {
      assert.equal(
        await refusedStatus(server, `/socket/websocket?vsn=2.0.0&token=${encodeURIComponent(tok)}`),
        403,
        `query token ${JSON.stringify(tok)}`,
      );
    }
    assert.equal(
      await refusedStatus(server, "/socket/websocket?vsn=2.0.0", { protocols: ["phoenix", bearerProtocol(forged)] }),
      403,
    );
    await expectPhoenixRefused(newSocket(server, { authToken: forged }, sockets));
  });

  test("bearer subprotocol without \"phoenix\": HTTP 400, not a 101 a browser would fail", async () => {
    // Chrome fails a handshake that offered subprotocols and got none back; phoenix.js always
    // offers "phoenix" too, so only a hand-made client sends this, and it learns why.
    assert.equal(
      await refusedStatus(server, "/socket/websocket?vsn=2.0.0", { protocols: [bearerProtocol(good)] }),
      400,
    );
  });

  test("raw subprotocol token opens and speaks V2", async () => {
    const c = await rawConnect(server, "/socket/websocket?vsn=2.0.0", {
      protocols: ["phoenix", bearerProtocol(good)],
      pool: raws,
    });
    assert.equal(c.ws.protocol, "phoenix");
    c.send([null, "1", "phoenix", "heartbeat", {}]);
    assert.deepEqual(await c.reply("1"), [null, "1", "phoenix", "phx_reply", { response: {}, status: "ok" }]);
  });
});
