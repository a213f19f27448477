import { beforeEach, describe, expect, it } from 'vitest';

import { ChatConnection, ChatError } from '../src/connection';
import { IChatMessage } from '../src/protocol';
import { agentKey, ChatStore } from '../src/state';
import { agentMessage, FakeSocket, settle, userMessage } from './fakes';

/** A manager's stored history, as the REST reader pages it. */
class History {
  readonly stored = new Map<string, IChatMessage[]>();
  readonly reads: Array<{ agentId: string; after: number }> = [];

  read = async (_clientId: string, agentId: string, after: number) => {
    this.reads.push({ agentId, after });
    return (this.stored.get(agentId) ?? []).filter(m => m.seq > after).slice(0, 1000);
  };
}

function forwarded(event: string, payload: any, agentId = 'a1', clientId = 'local') {
  return { event, payload, agentId, clientId };
}

describe('ChatConnection', () => {
  let socket: FakeSocket;
  let history: History;
  let store: ChatStore;
  let connection: ChatConnection;

  beforeEach(() => {
    socket = new FakeSocket();
    history = new History();
    store = new ChatStore();
    connection = new ChatConnection(socket, store, history.read);
  });

  it('loads stored history, then logs in after its last seq', async () => {
    history.stored.set('a1', [userMessage(1), agentMessage(2, 'c1')]);
    socket.connect();
    await connection.open('local', 'a1');
    expect(store.transcript(agentKey('local', 'a1')).lastSeq).toBe(2);
    expect(socket.take()).toEqual([
      { event: 'setClient', payload: { clientId: 'local' } },
      { event: 'forward', payload: { event: 'login', agentId: 'a1', payload: { afterSeq: 2 } } }
    ]);
  });

  it('pages long histories', async () => {
    const many = Array.from({ length: 1500 }, (_, i) => userMessage(i + 1));
    history.stored.set('a1', many);
    socket.connect();
    await connection.open('local', 'a1');
    expect(history.reads.map(r => r.after)).toEqual([0, 1000]);
    expect(store.transcript(agentKey('local', 'a1')).messages).toHaveLength(1500);
  });

  it('opens an agent once however often it is asked', async () => {
    socket.connect();
    await Promise.all([connection.open('local', 'a1'), connection.open('local', 'a1')]);
    expect(socket.take().filter(e => e.event === 'forward')).toHaveLength(1);
  });

  it('logs in when the socket comes up if it was opened before', async () => {
    await connection.open('local', 'a1');
    expect(socket.take()).toEqual([]);
    socket.connect();
    await settle();
    expect(socket.take().map(e => e.payload.event ?? e.event)).toEqual(['setClient', 'login']);
  });

  it('after a reconnect resumes every agent after its last seq, without duplicates', async () => {
    history.stored.set('a1', [userMessage(1), agentMessage(2, 'c1')]);
    socket.connect();
    await connection.open('local', 'a1');
    await connection.open('remote', 'b1');
    socket.fire('forwardedEvent', forwarded('chatMessage', userMessage(3, 'q', 'b1'), 'b1', 'remote'));
    socket.take();

    socket.drop();
    expect(connection.status.socket).toBe('reconnecting');
    socket.connect();
    await settle();
    expect(socket.take()).toEqual([
      { event: 'setClient', payload: { clientId: 'local' } },
      { event: 'forward', payload: { event: 'login', agentId: 'a1', payload: { afterSeq: 2 } } },
      { event: 'setClient', payload: { clientId: 'remote' } },
      { event: 'forward', payload: { event: 'login', agentId: 'b1', payload: { afterSeq: 3 } } }
    ]);
    // The manager replays what was missed; what the panel held already is not shown twice.
    const transcript = store.transcript(agentKey('local', 'a1'));
    const missed = agentMessage(3, 'c2');
    socket.fire('forwardedEvent', forwarded('chatMessage', transcript.messages[1]));
    socket.fire('forwardedEvent', forwarded('chatMessage', missed));
    expect(transcript.messages.map(m => m.seq)).toEqual([1, 2, 3]);
    expect(connection.status.socket).toBe('connected');
  });

  it('keeps each agent\'s traffic to its own transcript', async () => {
    socket.connect();
    await connection.open('local', 'a1');
    await connection.open('local', 'a2');
    socket.fire('forwardedEvent', forwarded('chatMessage', agentMessage(1, 'c1', 'for a2', 'a2'), 'a2'));
    socket.fire('forwardedEvent', forwarded('chatMessage', agentMessage(1, 'c9', 'stray', 'zz'), 'zz'));
    expect(store.transcript(agentKey('local', 'a1')).messages).toHaveLength(0);
    expect(store.transcript(agentKey('local', 'a2')).messages[0].response!.result).toBe('for a2');
    expect(store.has(agentKey('local', 'zz'))).toBe(false);
  });

  it('sends a chat with a correlationId and shows it as pending', async () => {
    socket.connect();
    const correlationId = await connection.chat('local', 'a1', 'hi');
    const chat = socket.take().find(e => e.payload?.event === 'chat')!;
    expect(chat.payload).toEqual({
      event: 'chat', agentId: 'a1', payload: { message: 'hi', correlationId, stream: true }
    });
    const transcript = store.transcript(agentKey('local', 'a1'));
    expect(transcript.pending.get(correlationId)?.text).toBe('hi');
  });

  it('reports a refused chat and keeps no phantom message', async () => {
    socket.connect();
    await connection.open('local', 'a1');
    socket.answer = (_event, payload) =>
      payload?.event === 'chat'
        ? { ok: false, error: { code: 'RATE_LIMITED', message: 'Too many messages' } }
        : { ok: true };
    const error = await connection.chat('local', 'a1', 'hi').catch(e => e);
    expect(error).toBeInstanceOf(ChatError);
    expect(error.code).toBe('RATE_LIMITED');
    expect(store.transcript(agentKey('local', 'a1')).pending.size).toBe(0);
  });

  it('sends a retry under the same correlationId', async () => {
    socket.connect();
    const id = await connection.chat('local', 'a1', 'hi', 'fixed-id');
    await connection.chat('local', 'a1', 'hi', id);
    const chats = socket.take().filter(e => e.payload?.event === 'chat');
    expect(chats.map(c => c.payload.payload.correlationId)).toEqual(['fixed-id', 'fixed-id']);
  });

  it('refuses to send while offline instead of queueing silently', async () => {
    const error = await connection.chat('local', 'a1', 'hi').catch(e => e);
    expect(error.code).toBe('OFFLINE');
  });

  it('follows the manager link state the controller reports', () => {
    socket.connect();
    socket.fire('remoteReconnecting', { clientId: 'local', attempt: 2 });
    expect(connection.status.remotes.get('local')).toBe(2);
    socket.fire('remoteReconnected', { clientId: 'local' });
    expect(connection.status.remotes.has('local')).toBe(false);
  });

  it('says so when the server refuses the connection', () => {
    socket.active = false;
    socket.fire('connect_error', new Error('Unauthorized'));
    expect(connection.status.socket).toBe('refused');
    expect(connection.status.error?.message).toBe('Unauthorized');
  });

  it('counts reconnect attempts', () => {
    socket.connect();
    socket.drop();
    socket.fireManager('reconnect_attempt', 3);
    expect(connection.status).toMatchObject({ socket: 'reconnecting', attempt: 3 });
  });

  it('forgets a closed agent and ignores its late events', async () => {
    socket.connect();
    await connection.open('local', 'a1');
    await connection.close('local', 'a1');
    expect(socket.take().pop()!.payload.event).toBe('logout');
    socket.fire('forwardedEvent', forwarded('chatMessage', agentMessage(1, 'c1')));
    expect(store.has(agentKey('local', 'a1'))).toBe(false);
  });
});
