// Standard JWTs minted by an independent library (npm `jsonwebtoken`, keys from node:crypto):
// every algorithm corecast takes is accepted, from a key file and from a JWKS file; wrong key,
// expired, not yet valid, wrong audience are 403 with the reason in the server's log and never
// the token; the `channels` claim limits joins; a JWKS file is re-read when it changes.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import jwt from "jsonwebtoken";
import {
  startServer,
  mintToken,
  newSocket,
  connectSocket,
  joinOk,
  pushResult,
  closeAll,
  refusedStatus,
  waitFor,
  SUITE_TIMEOUT_MS,
} from "./helpers.mjs";

const SECRET = "a-shared-secret-of-some-length";
const now = () => Math.floor(Date.now() / 1000);
const dir = mkdtempSync(join(tmpdir(), "corecast-jwt-"));

const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
const rsa2 = generateKeyPairSync("rsa", { modulusLength: 2048 });
const pem = (k) => k.export({ type: "spki", format: "pem" });
function file(name, text) {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}
const jwk = (k, kid, alg) => ({ ...k.export({ format: "jwk" }), kid, alg, use: "sig" });

async function upgradeStatus(server, token) {
  try {
    return await refusedStatus(server, `/socket/websocket?vsn=2.0.0&token=${encodeURIComponent(token)}`);
  } catch (e) {
    if (/was accepted/.test(e.message)) return 101;
    throw e;
  }
}

describe("JWT tokens from an independent library", { timeout: SUITE_TIMEOUT_MS }, () => {
  const servers = [];
  const sockets = [];
  after(async () => {
    await closeAll(sockets);
    for (const s of servers) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  async function serve(config) {
    const s = await startServer({ require_token: true, ...config });
    servers.push(s);
    return s;
  }
  async function accepted(server, token) {
    const s = newSocket(server, { params: { token } }, sockets);
    await connectSocket(s);
    const ch = s.channel("room:jwt", {});
    await joinOk(ch);
    assert.equal((await pushResult(ch.push("new_msg", { ok: 1 }))).status, "ok");
    return s;
  }

  for (const alg of ["HS256", "HS384", "HS512"]) {
    test(`${alg} with the shared secret: accepted; another secret refused`, async () => {
      const server = await serve({ auth_secret: SECRET, jwt_algorithm: alg });
      const good = jwt.sign({ sub: "alice" }, SECRET, { algorithm: alg, expiresIn: 60 });
      await accepted(server, good);
      const bad = jwt.sign({ sub: "alice" }, "another secret", { algorithm: alg, expiresIn: 60 });
      assert.equal(await upgradeStatus(server, bad), 403);
      // Another HMAC size than the server's is refused too (no algorithm confusion).
      const other = alg === "HS256" ? "HS512" : "HS256";
      assert.equal(await upgradeStatus(server, jwt.sign({ sub: "a" }, SECRET, { algorithm: other, expiresIn: 60 })), 403);
      await waitFor(() => /bad token signature/.test(server.stderr), "the refusal's reason in the log");
      assert.ok(!server.stderr.includes(bad), "the token is never logged");
    });
  }

  test("RS256 and ES256 with a public key file; a token signed by another key is refused", async () => {
    const rs = await serve({ jwt_algorithm: "RS256", jwt_public_key_file: file("rsa.pem", pem(rsa.publicKey)) });
    await accepted(rs, jwt.sign({ sub: "bob" }, rsa.privateKey, { algorithm: "RS256", expiresIn: 60 }));
    const wrong = jwt.sign({ sub: "bob" }, rsa2.privateKey, { algorithm: "RS256", expiresIn: 60 });
    assert.equal(await upgradeStatus(rs, wrong), 403);
    // An HS256 token "signed" with the public key's text (the classic confusion) is refused.
    const confused = jwt.sign({ sub: "x" }, pem(rsa.publicKey), { algorithm: "HS256", expiresIn: 60 });
    assert.equal(await upgradeStatus(rs, confused), 403);
    const es = await serve({ jwt_algorithm: "ES256", jwt_public_key_file: file("ec.pem", pem(ec.publicKey)) });
    await accepted(es, jwt.sign({ sub: "carol" }, ec.privateKey, { algorithm: "ES256", expiresIn: 60 }));
    assert.equal(await upgradeStatus(es, wrong), 403);
    // `corecast token --alg ES256 --key-file`: accepted by the server, verified by the npm library.
    const priv = file("ec-priv.pem", ec.privateKey.export({ type: "pkcs8", format: "pem" }));
    const minted = await mintToken(["--alg", "ES256", "--key-file", priv, "--sub", "dave", "--ttl-secs", "60"]);
    assert.equal(jwt.verify(minted, ec.publicKey, { algorithms: ["ES256"] }).sub, "dave");
    await accepted(es, minted);
  });

  test("JWKS file: the kid picks the key; a new key is taken after the file changes", async () => {
    const path = file("jwks.json", JSON.stringify({ keys: [jwk(rsa.publicKey, "r1", "RS256"), jwk(ec.publicKey, "e1", "ES256")] }));
    const server = await serve({ jwks_file: path });
    await accepted(server, jwt.sign({ sub: "d" }, rsa.privateKey, { algorithm: "RS256", keyid: "r1", expiresIn: 60 }));
    await accepted(server, jwt.sign({ sub: "e" }, ec.privateKey, { algorithm: "ES256", keyid: "e1", expiresIn: 60 }));
    const rotated = jwt.sign({ sub: "f" }, rsa2.privateKey, { algorithm: "RS256", keyid: "r2", expiresIn: 60 });
    assert.equal(await upgradeStatus(server, rotated), 403, "unknown kid");
    // Wrong key under a known kid.
    const forged = jwt.sign({ sub: "f" }, rsa2.privateKey, { algorithm: "RS256", keyid: "r1", expiresIn: 60 });
    assert.equal(await upgradeStatus(server, forged), 403);
    writeFileSync(path, JSON.stringify({ keys: [jwk(rsa2.publicKey, "r2", "RS256")] }));
    await waitFor(async () => (await upgradeStatus(server, rotated)) === 101, "the rotated key to be taken", 5000, 200);
    await waitFor(() => /jwks_file reloaded/.test(server.stderr), "the reload in the log");
  });

  test("expired, not yet valid, wrong audience or issuer: 403, the reason logged, never the token", async () => {
    const server = await serve({ auth_secret: SECRET, jwt_audience: "corecast", jwt_issuer: "app", jwt_leeway_secs: 5 });
    const sign = (claims) => jwt.sign({ sub: "alice", aud: "corecast", iss: "app", ...claims }, SECRET, { algorithm: "HS256" });
    await accepted(server, sign({ exp: now() + 60 }));
    const cases = [
      [sign({ exp: now() - 60 }), "token expired"],
      [sign({ exp: now() + 600, nbf: now() + 300 }), "token not yet valid"],
      [sign({ exp: now() + 60, aud: "someone-else" }), "token audience not accepted"],
      [sign({ exp: now() + 60, iss: "evil" }), "token issuer not accepted"],
      [jwt.sign({ sub: "a", iss: "app", exp: now() + 60 }, SECRET), "token audience not accepted"],
      [sign({ exp: now() + 30 * 86400 }), "token lifetime over token_max_age_secs"],
    ];
    for (const [tok, reason] of cases) {
      assert.equal(await upgradeStatus(server, tok), 403, reason);
      await waitFor(() => server.stderr.includes(reason), `"${reason}" in the log`);
      assert.ok(!server.stderr.includes(tok), "the token is never logged");
    }
    // Within the leeway: accepted.
    await accepted(server, sign({ exp: now() + 60, nbf: now() + 2 }));
  });

  test("the presence claim is the socket's presence meta", async () => {
    const server = await serve({ auth_secret: SECRET, presence: ["room:p*"] });
    const tok = jwt.sign({ sub: "erin", presence: { role: "admin" } }, SECRET, { expiresIn: 60 });
    const s = newSocket(server, { params: { token: tok } }, sockets);
    await connectSocket(s);
    const ch = s.channel("room:p1", { meta: { role: "forged" } });
    const diffs = [];
    ch.on("presence_diff", (d) => diffs.push(d));
    await joinOk(ch);
    await waitFor(() => diffs.some((d) => d.joins.erin), "erin's join in a presence_diff");
    const metas = diffs.find((d) => d.joins.erin).joins.erin.metas;
    assert.equal(metas[0].role, "admin", "the token's meta, not the join payload's");
  });

  test("the channels claim limits joins; corecast token mints the same claims", async () => {
    const server = await serve({ auth_secret: SECRET, topics: ["room:*", "lobby"] });
    const tok = jwt.sign({ sub: "alice", channels: ["room:a*"] }, SECRET, { expiresIn: 60 });
    const s = newSocket(server, { params: { token: tok } }, sockets);
    await connectSocket(s);
    await joinOk(s.channel("room:abc", {}));
    for (const topic of ["room:b", "lobby"]) {
      const r = await pushResult(s.channel(topic, {}).join());
      assert.deepEqual(r, { status: "error", response: { reason: "unmatched topic" } }, topic);
    }
    // No channels claim: the server's topics.
    const free = newSocket(server, { params: { token: jwt.sign({ sub: "bob" }, SECRET, { expiresIn: 60 }) } }, sockets);
    await connectSocket(free);
    await joinOk(free.channel("lobby", {}));
    // `corecast token --channels`: the same claim, verified by the npm library too.
    const minted = await mintToken(["--secret", SECRET, "--sub", "carol", "--ttl-secs", "60", "--channels", "room:a*"]);
    assert.deepEqual(jwt.verify(minted, SECRET, { algorithms: ["HS256"] }).channels, ["room:a*"]);
    const c = newSocket(server, { params: { token: minted } }, sockets);
    await connectSocket(c);
    await joinOk(c.channel("room:a1", {}));
    assert.equal((await pushResult(c.channel("room:b1", {}).join())).status, "error");
  });
});
