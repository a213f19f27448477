'use strict';
// The load generator: the official socket.io-client drives every path the same way, so
// the client never biases a comparison.
//
// usage: node loadgen.js CONFIG.json; config {path: bare|direct|controller|relay, url,
// socketPath?, token?, apiKey?, agents: [{id, password?}], mode: latency|throughput|hold,
// n?, warmup?, frontends?, seconds?, stream?}. Prints one JSON line (hold mode: a
// {"ready": true} line first, then waits for stdin to close). Every frontend checks that
// each answer arrived exactly once and in order; `checks` counts what did not.

const fs = require('fs');
const { io } = require('socket.io-client');

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const TURN_TIMEOUT_MS = 15000;
const checks = { duplicates: 0, missing: 0, outOfOrder: 0, errors: 0 };

class Frontend {
  constructor(agent) {
    this.agent = agent;
    this.events = 0;
    this.waiting = null; // {correlationId, resolve, userSeen}
    this.answered = new Set();
    this.seqs = new Set();
    this.maxSeq = 0;
    this.lastSequence = -1;
    this.turns = 0;
  }

  async connect() {
    const { path, url, socketPath, token, apiKey } = config;
    const namespace = { bare: '/bench', direct: '/agents' }[path] || '/clients';
    const options = { transports: ['websocket'], forceNew: true, reconnection: false };
    if (socketPath) options.path = socketPath;
    if (token) options.query = { token };
    if (path === 'direct') options.auth = { apiKey };
    this.socket = io(url + namespace, options);
    await new Promise((resolve, reject) => {
      this.socket.once('connect', resolve);
      this.socket.once('connect_error', reject);
    });
    if (path === 'bare') {
      this.socket.on('echoed', (data) => { this.events += 1; this.answer(data.correlationId); });
    } else if (path === 'direct') {
      this.socket.onAny((event, payload) => { this.events += 1; this.received(event, payload); });
      const loggedIn = new Promise((resolve) => this.socket.once('loginSuccess', resolve));
      this.socket.emit('login', { agentId: this.agent.id, password: this.agent.password });
      await loggedIn;
    } else {
      this.socket.on('forwardedEvent', (data) => {
        this.events += 1;
        this.received(data.event, data.payload);
      });
      await this.socket.emitWithAck('setClient', { clientId: config.clientId || 'bench' });
      const ack = await this.socket.emitWithAck('forward', { event: 'login', agentId: this.agent.id });
      if (!ack || !ack.ok) throw new Error(`login refused: ${JSON.stringify(ack)}`);
    }
    return this;
  }

  received(event, payload) {
    if (event === 'chatMessage') {
      this.checkSeq(payload.seq);
      if (payload.from === 'user') {
        if (this.waiting && this.waiting.correlationId === payload.correlationId) this.waiting.userSeen = true;
      } else {
        if (this.waiting && this.waiting.correlationId === payload.correlationId
            && !this.waiting.userSeen) checks.outOfOrder += 1;
        this.answer(payload.correlationId);
      }
    } else if (event === 'chatEvent') {
      if (payload.sequence <= this.lastSequence) checks.outOfOrder += 1;
      this.lastSequence = payload.sequence;
    }
  }

  checkSeq(seq) {
    if (typeof seq !== 'number') return;
    if (this.seqs.has(seq)) checks.duplicates += 1;
    else if (seq < this.maxSeq) checks.outOfOrder += 1;
    else if (this.maxSeq && seq > this.maxSeq + 1) checks.missing += seq - this.maxSeq - 1;
    this.seqs.add(seq);
    this.maxSeq = Math.max(this.maxSeq, seq);
  }

  answer(correlationId) {
    if (this.answered.has(correlationId)) { checks.duplicates += 1; return; }
    this.answered.add(correlationId);
    if (!this.waiting || this.waiting.correlationId !== correlationId) { checks.outOfOrder += 1; return; }
    this.waiting.resolve();
  }

  // One turn: resolves once the ack (if any) and the answer are both back.
  async turn() {
    const correlationId = `${this.agent.id}-${this.turns++}`;
    this.lastSequence = -1;
    const answered = new Promise((resolve) => { this.waiting = { correlationId, resolve, userSeen: false }; });
    const payload = { message: 'one two three four', stream: !!config.stream, correlationId };
    let sent;
    if (config.path === 'bare') {
      this.socket.emit('echo', payload);
      sent = Promise.resolve({ ok: true });
    } else if (config.path === 'direct') {
      sent = this.socket.emitWithAck('chat', payload);
    } else {
      sent = this.socket.emitWithAck('forward', { event: 'chat', agentId: this.agent.id, payload });
    }
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), TURN_TIMEOUT_MS); });
    const [ack, outcome] = await Promise.all([sent, Promise.race([answered, timeout])]);
    clearTimeout(timer);
    if (!ack || !ack.ok) checks.errors += 1;
    if (outcome === 'timeout') checks.missing += 1;
    this.waiting = null;
  }
}

async function connectAll(count) {
  const frontends = [];
  for (let start = 0; start < count; start += 50) {
    const batch = config.agents.slice(start, Math.min(count, start + 50));
    frontends.push(...await Promise.all(batch.map((agent) => new Frontend(agent).connect())));
  }
  return frontends;
}

function percentiles(samples) {
  const ordered = [...samples].sort((a, b) => a - b);
  const at = (p) => ordered[Math.min(ordered.length - 1, Math.floor(p * ordered.length))];
  const mean = ordered.reduce((a, b) => a + b, 0) / ordered.length;
  return { p50_ms: at(0.5), p95_ms: at(0.95), p99_ms: at(0.99), mean_ms: mean, n: ordered.length };
}

async function latency() {
  const [frontend] = await connectAll(1);
  const samples = [];
  const warmup = config.warmup ?? 20;
  for (let index = 0; index < config.n + warmup; index++) {
    const started = process.hrtime.bigint();
    await frontend.turn();
    if (index >= warmup) samples.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  return { frontends: [frontend], figures: percentiles(samples) };
}

async function throughput() {
  const frontends = await connectAll(config.frontends);
  const stop = Date.now() + config.seconds * 1000;
  let turns = 0;
  const before = frontends.reduce((sum, f) => sum + f.events, 0);
  const started = process.hrtime.bigint();
  await Promise.all(frontends.map(async (frontend) => {
    while (Date.now() < stop) { await frontend.turn(); turns += 1; }
  }));
  const took = Number(process.hrtime.bigint() - started) / 1e9;
  const events = frontends.reduce((sum, f) => sum + f.events, 0) - before;
  return { frontends, figures: { frontends: frontends.length, stream: !!config.stream,
    turns_per_s: turns / took, events_per_s: events / took, seconds: took } };
}

async function hold() {
  const started = process.hrtime.bigint();
  const frontends = await connectAll(config.frontends);
  const took = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ ready: true, frontends: frontends.length, connect_s: took }));
  await new Promise((resolve) => { process.stdin.on('end', resolve); process.stdin.resume(); });
  await Promise.all(frontends.map((f) => f.turn())); // every held login still answers
  return { frontends, figures: { frontends: frontends.length, connect_s: took } };
}

(async () => {
  const { frontends, figures } = await { latency, throughput, hold }[config.mode]();
  for (const f of frontends) f.socket.close();
  console.log(JSON.stringify({ ...figures, path: config.path, checks }));
  process.exit(0);
})().catch((err) => { console.error(err); process.exit(1); });
