import { describe, expect, it } from 'vitest';

import { ControllerApi } from '../src/api';
import { ChatConnection } from '../src/connection';
import { SidebarModel } from '../src/model';
import { ChatStore } from '../src/state';
import { FakeSocket } from './fakes';

/** The controller's REST API as the model uses it, over two managers. */
function fakeApi(): ControllerApi {
  const agents: Record<string, any[]> = {
    local: [{ id: 'a1', name: 'assistant' }, { id: 'a2', name: 'helper' }],
    remote: [{ id: 'b1', name: 'far' }]
  };
  return {
    clients: async () => [{ id: 'local', name: 'local' }, { id: 'remote', name: 'remote' }],
    agents: async (clientId: string) => agents[clientId],
    catalog: async () => ({ providers: [], runtimes: [] }),
    messages: async () => []
  } as unknown as ControllerApi;
}

function setUp(): { model: SidebarModel; socket: FakeSocket } {
  const socket = new FakeSocket();
  const api = fakeApi();
  const connection = new ChatConnection(socket, new ChatStore(), (c, a, after) =>
    api.messages(c, a, after)
  );
  socket.connect();
  return { model: new SidebarModel(api, connection), socket };
}

describe('SidebarModel', () => {
  it('comes back to the remembered agent', async () => {
    const { model } = setUp();
    await model.load({ clientId: 'remote', agentId: 'b1' });
    expect(model.selection).toEqual({ clientId: 'remote', agentId: 'b1' });
  });

  it('falls back to the first agent when the remembered one is gone', async () => {
    const { model } = setUp();
    await model.load({ clientId: 'local', agentId: 'deleted' });
    expect(model.selection).toEqual({ clientId: 'local', agentId: 'a1' });
  });

  it('shows a controller error once, not again after it was dismissed', async () => {
    const { model, socket } = setUp();
    socket.fire('error', { code: 'RATE_LIMITED', message: 'Too many messages' });
    expect(model.notice).toBe('Too many messages');
    model.dismissNotice();
    socket.fire('remoteReconnecting', { clientId: 'local', attempt: 1 });
    expect(model.notice).toBeNull();
  });

  it('lets a refresh wait for the start-up load, keeping the remembered agent', async () => {
    const { model } = setUp();
    await model.refresh(); // before start-up: nothing to do
    expect(model.clients).toEqual([]);
    const startUp = model.load({ clientId: 'local', agentId: 'a2' });
    const refresh = model.refresh();
    await Promise.all([startUp, refresh]);
    expect(model.selection).toEqual({ clientId: 'local', agentId: 'a2' });
  });

  it('retries a failed message under its first correlationId', async () => {
    const { model, socket } = setUp();
    await model.load();
    socket.answer = (_event, payload) =>
      payload?.event === 'chat'
        ? { ok: false, error: { code: 'REMOTE_UNAVAILABLE', message: 'Manager unavailable' } }
        : { ok: true };
    expect(await model.send('hello')).toBe(false);
    expect(model.notice).toBe('Manager unavailable');
    socket.answer = () => ({ ok: true });
    expect(await model.send('hello')).toBe(true);
    expect(await model.send('hello')).toBe(true); // sent: a new message, a new id
    const ids = socket.take()
      .filter(e => e.payload?.event === 'chat')
      .map(e => e.payload.payload.correlationId);
    expect(ids).toHaveLength(3);
    expect(ids[1]).toBe(ids[0]);
    expect(ids[2]).not.toBe(ids[0]);
  });
});
