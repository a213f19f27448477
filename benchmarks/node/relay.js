'use strict';
// The benchmark peer: an Agenstra-shaped relay in front of an agenstra manager.
//
// A socket.io server speaking the controller's frontend contract as far as the load
// generator needs it (/clients: setClient, forward {event, agentId, payload} with ack,
// forwardedEvent out) and, as Agenstra's controller does, one socket.io-client to the
// manager's /agents namespace per (frontend socket, agent), authenticated with the API
// key and logged in with the agent's password.
//
// usage: node relay.js PORT MANAGER_URL   (env RELAY_API_KEY, RELAY_CREDENTIALS = a JSON
// file {agentId: password}); prints "ready PORT" once it listens.

const fs = require('fs');
const http = require('http');
const { Server } = require('socket.io');
const { io } = require('socket.io-client');

const [port, managerUrl] = process.argv.slice(2);
const apiKey = process.env.RELAY_API_KEY;
const passwords = JSON.parse(fs.readFileSync(process.env.RELAY_CREDENTIALS, 'utf8'));
const ACK_TIMEOUT_MS = 30000;

function failure(code, message) {
  return { ok: false, error: { code, message } };
}

// One upstream connection for one agent of one frontend socket.
function openLink(frontend, clientId, agentId) {
  const upstream = io(`${managerUrl}/agents`, {
    auth: { apiKey }, transports: ['websocket'], reconnection: true, forceNew: true,
  });
  let loggedIn = null;
  upstream.onAny((event, payload) => {
    if (event === 'loginSuccess' && loggedIn) loggedIn.resolve(true);
    if (event === 'loginError' && loggedIn) loggedIn.resolve(false);
    frontend.emit('forwardedEvent', { event, payload, clientId, agentId });
  });
  const link = {
    upstream,
    login(extra) {
      return new Promise((resolve) => {
        loggedIn = { resolve };
        upstream.emit('login', { ...extra, agentId, password: passwords[agentId] });
      });
    },
  };
  return link;
}

async function forward(frontend, links, clientId, request) {
  const { event, agentId } = request || {};
  const payload = (request && request.payload) || {};
  if (typeof event !== 'string' || typeof agentId !== 'string') {
    return failure('INVALID_PAYLOAD', 'event and agentId are required');
  }
  if (!(agentId in passwords)) return failure('NO_CREDENTIALS', 'No stored credentials');
  let link = links.get(agentId);
  if (!link) {
    link = openLink(frontend, clientId, agentId);
    links.set(agentId, link);
  }
  if (event === 'login') {
    return (await link.login(payload)) ? { ok: true } : failure('LOGIN_FAILED', 'Invalid credentials');
  }
  if (event === 'chat') {
    try {
      // As the controller: a chat is sent once the manager has stored it (its ack).
      const ack = await link.upstream.timeout(ACK_TIMEOUT_MS).emitWithAck('chat', payload);
      return ack && ack.ok ? { ok: true } : failure('REMOTE_UNAVAILABLE', 'refused');
    } catch (err) {
      return failure('REMOTE_UNAVAILABLE', String(err));
    }
  }
  link.upstream.emit(event, payload);
  return { ok: true };
}

const server = http.createServer();
const sio = new Server(server, { transports: ['websocket'], maxHttpBufferSize: 16 * 1024 * 1024 });
sio.of('/clients').on('connection', (frontend) => {
  const links = new Map();
  let clientId = 'bench';
  frontend.on('setClient', (request, ack) => {
    clientId = (request && request.clientId) || clientId;
    frontend.emit('clientSet', { clientId, message: 'Client context set' });
    if (typeof ack === 'function') ack({ ok: true });
  });
  frontend.on('forward', async (request, ack) => {
    const answer = await forward(frontend, links, clientId, request);
    if (typeof ack === 'function') ack(answer);
  });
  frontend.on('disconnect', () => {
    for (const link of links.values()) link.upstream.close();
    links.clear();
  });
});
server.listen(Number(port), '127.0.0.1', () => console.log(`ready ${port}`));
