// Socket ids and forced disconnect (issue 14): POST /api/disconnect {"id": "users_socket:<sub>"}
// closes every phoenix.js socket of that user, which reconnects and rejoins by itself (with a
// token that is still good); another user's socket is untouched.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { LongPoll } from "phoenix";
import {
  startServer,
  mintToken,
  newSocket,
  connectSocket,
  joinOk,
  closeAll,
  httpRequest,
  waitFor,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const SECRET = "s3cret";

describe("disconnect by socket id", { timeout: SUITE_TIMEOUT_MS }, () => {
  let server;
  const sockets = [];

  before(async () => {
    server = await startServer({ auth_secret: SECRET });
  });

  after(async () => {
    await closeAll(sockets);
    if (server) await server.stop();
  });

  test("every socket of alice is closed and reconnects; bob's stays", async () => {
    const alice = await mintToken(["--secret", SECRET, "--sub", "alice", "--ttl-secs", "600"]);
    const bob = await mintToken(["--secret", SECRET, "--sub", "bob", "--ttl-secs", "600"]);
    const tabs = [];
    for (let i = 0; i < 3; i++) {
      const s = newSocket(server, { params: { token: alice } }, sockets);
      await connectSocket(s);
      const ch = s.channel("room:d", {});
      await joinOk(ch);
      tabs.push({ s, ch });
    }
    const other = newSocket(server, { params: { token: bob } }, sockets);
    await connectSocket(other);
    await joinOk(other.channel("room:d", {}));

    const res = await httpRequest(server, "POST", "/api/disconnect", { body: { id: "users_socket:alice" } });
    assert.equal(res.status, 202, res.body);
    for (const { s } of tabs) {
      await waitFor(() => s.events.close.length > 0, "alice's socket closed by the server");
      assert.equal(s.events.close[0].code, 1000);
    }
    // phoenix.js reconnects by itself and rejoins its channel.
    for (const { s, ch } of tabs) {
      await waitFor(() => s.events.open >= 2 && ch.state === "joined", "reconnected and rejoined", 8000);
    }
    assert.equal(other.events.close.length, 0, "bob was not disconnected");
    assert.ok(other.isConnected());
    const nobody = await httpRequest(server, "POST", "/api/disconnect", { body: { nope: 1 } });
    assert.equal(nobody.status, 400);
  });

  test("a long-poll socket of carol is disconnected too: its session ends, it reconnects", async () => {
    const carol = await mintToken(["--secret", SECRET, "--sub", "carol", "--ttl-secs", "600"]);
    const s = newSocket(server, { transport: LongPoll, params: { token: carol } }, sockets);
    await connectSocket(s, 5000);
    const ch = s.channel("room:d", {});
    await joinOk(ch);
    const res = await httpRequest(server, "POST", "/api/disconnect", { body: { id: "users_socket:carol" } });
    assert.equal(res.status, 202, res.body);
    // The waiting poll is answered 410: phoenix.js closes (3410 "session_gone"), opens a new
    // session and rejoins.
    await waitFor(() => s.events.close.length > 0, "carol's long-poll socket closed", 5000);
    assert.equal(s.events.close[0].code, 3410);
    await waitFor(() => s.events.open >= 2 && ch.state === "joined", "a new session, rejoined", 8000);
  });
});
