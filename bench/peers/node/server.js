// peer-node: the Phoenix Channels V2 pub/sub server a Node developer would write with `ws`,
// as a baseline for corecast.
//
// One process, one thread (Node's event loop): on a multi-core box it uses one core unless
// run under cluster/pm2, which would then need a shared broker (Redis) for cross-process
// broadcast; that is not what this baseline measures.
//
// Design (the usual one): an http.Server answers POST /api/broadcast and hands upgrades on
// /socket/websocket to a ws WebSocketServer (noServer); a Map topic -> Set of sockets. A
// broadcast is encoded once into a Buffer and that Buffer is sent to every subscriber (ws
// frames it per socket without copying the payload). A socket with more than
// MAX_BUFFERED bytes waiting in user space is terminated as a slow consumer.
//
// Usage: node server.js [--listen] 127.0.0.1:4103
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const MAX_BUFFERED = 8 * 1024 * 1024;
const MAX_API_BODY = 1024 * 1024;
const OK_REPLY = '{"response":{},"status":"ok"}';
const UNMATCHED_REPLY = '{"response":{"reason":"unmatched topic"},"status":"error"}';

/** @type {Map<string, Set<import('ws').WebSocket>>} */
const topics = new Map();

function join(ws, topic) {
  let subs = topics.get(topic);
  if (!subs) {
    subs = new Set();
    topics.set(topic, subs);
  }
  subs.add(ws);
  ws.joined.add(topic);
}

function leave(ws, topic) {
  ws.joined.delete(topic);
  const subs = topics.get(topic);
  if (subs) {
    subs.delete(ws);
    if (subs.size === 0) topics.delete(topic);
  }
}

/** Encode [null,null,topic,event,payload] once (payload is raw JSON text) and send it to all. */
function broadcast(topic, event, payloadJson) {
  const subs = topics.get(topic);
  if (!subs) return;
  const frame = Buffer.from(
    `[null,null,${JSON.stringify(topic)},${JSON.stringify(event)},${payloadJson}]`,
  );
  for (const ws of subs) {
    if (ws.bufferedAmount > MAX_BUFFERED) {
      ws.terminate();
      continue;
    }
    ws.send(frame, { binary: false });
  }
}

/**
 * The raw text of the fifth element of a JSON array already known to be valid, so the payload
 * is forwarded byte for byte (JSON.parse would round the 19-digit timestamps it carries).
 */
function fifthElement(text) {
  let depth = 0;
  let commas = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      depth++;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    } else if (c === 0x2c && depth === 1 && ++commas === 4) {
      return text.slice(i + 1, text.lastIndexOf(']')).trim();
    }
  }
  return null;
}

function reply(ws, joinRef, ref, topic, body) {
  ws.send(`[${JSON.stringify(joinRef)},${JSON.stringify(ref)},${JSON.stringify(topic)},"phx_reply",${body}]`);
}

function onMessage(ws, data, isBinary) {
  if (isBinary) return;
  const text = data.toString();
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return;
  }
  if (!Array.isArray(msg) || msg.length !== 5) return;
  const [joinRef, ref, topic, event] = msg;
  if (typeof topic !== 'string' || typeof event !== 'string') return;
  if (topic === 'phoenix' && event === 'heartbeat') {
    reply(ws, null, ref, topic, OK_REPLY);
  } else if (event === 'phx_join') {
    join(ws, topic);
    reply(ws, joinRef, ref, topic, OK_REPLY);
  } else if (event === 'phx_leave') {
    leave(ws, topic);
    reply(ws, joinRef, ref, topic, OK_REPLY);
  } else if (ws.joined.has(topic)) {
    const payload = fifthElement(text);
    if (payload !== null) broadcast(topic, event, payload);
    reply(ws, joinRef, ref, topic, OK_REPLY);
  } else {
    reply(ws, joinRef, ref, topic, UNMATCHED_REPLY);
  }
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

wss.on('connection', (ws) => {
  ws.joined = new Set();
  ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
  ws.on('close', () => {
    for (const topic of ws.joined) leave(ws, topic);
  });
  ws.on('error', () => ws.terminate());
});

function apiBroadcast(req, res) {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_API_BODY) {
      res.writeHead(413).end();
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_API_BODY) return;
    const text = Buffer.concat(chunks).toString();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (!body || typeof body.topic !== 'string' || typeof body.event !== 'string' || !('payload' in body)) {
      res.writeHead(400).end();
      return;
    }
    // JSON.parse would round big integers in the payload: forward its raw text when the body is
    // the usual {"topic","event","payload"} with the payload last, else re-encode it.
    const at = text.lastIndexOf('"payload"');
    const raw = at >= 0 ? text.slice(text.indexOf(':', at) + 1, text.lastIndexOf('}')).trim() : '';
    let payload = JSON.stringify(body.payload);
    try {
      if (raw && JSON.stringify(JSON.parse(raw)) === payload) payload = raw;
    } catch {
      // keep the re-encoded payload
    }
    broadcast(body.topic, body.event, payload);
    res.writeHead(202).end();
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (req.method === 'POST' && path === '/api/broadcast') {
    apiBroadcast(req, res);
  } else {
    res.writeHead(404).end();
  }
});

server.on('upgrade', (req, socket, head) => {
  if (req.url.split('?', 1)[0] !== '/socket/websocket') {
    socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

function listenAddr() {
  const args = process.argv.slice(2);
  const addr = args[0] === '--listen' ? args[1] : args[0] || '127.0.0.1:4103';
  const at = addr.lastIndexOf(':');
  return { host: addr.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(addr.slice(at + 1)) };
}

const { host, port } = listenAddr();
server.listen({ host, port, backlog: 4096 }, () => {
  const a = server.address();
  console.log(`listening on ${a.address}:${a.port}`);
});
