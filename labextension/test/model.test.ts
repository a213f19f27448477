import { afterEach, describe, expect, it, vi } from 'vitest';

import { ApiError, ControllerApi } from '../src/api';
import { ChatConnection } from '../src/connection';
import { RETRY_MS, SidebarModel, statusView } from '../src/model';
import { ChatStore } from '../src/state';
import { FakeSocket, settle } from './fakes';

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

function setUp(api = fakeApi()): { model: SidebarModel; socket: FakeSocket } {
  const socket = new FakeSocket();
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
    expect(model.status.text).toBe('Manager unreachable'); // a state, said once
    expect(model.notice).toBeNull();
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

describe('a refresh and a click at the same time', () => {
  it('keeps the agent the user picked while the refresh was on its way', async () => {
    const api = fakeApi() as any;
    const { model } = setUp(api);
    await model.load({ clientId: 'local', agentId: 'a2' });
    let answer: () => void = () => undefined;
    const list = api.agents;
    api.agents = (clientId: string) =>
      new Promise(resolve => (answer = () => resolve(list(clientId))));
    const refresh = model.refresh(); // e.g. the panel shown again: it asks for the agents
    await settle();
    await model.selectAgent('a1'); // meanwhile the user picks another agent
    answer();
    await refresh;
    expect(model.selection).toEqual({ clientId: 'local', agentId: 'a1' });
  });
});

describe('deleting an agent', () => {
  it('logs out before the delete, so no refusal of a late logout shows as a notice', async () => {
    const order: string[] = [];
    const api = fakeApi() as any;
    api.deleteAgent = async () => order.push('delete');
    const { model, socket } = setUp(api);
    socket.answer = (_event, payload) => {
      if (payload?.event === 'logout') {
        order.push('logout');
      }
      return { ok: true };
    };
    await model.load({ clientId: 'local', agentId: 'a2' });
    expect(await model.deleteAgent()).toBe(true);
    expect(order).toEqual(['logout', 'delete']);
    expect(model.notice).toBeNull();
  });
});

/** A controller whose local manager answers 502 while `down`, and refuses taken names. */
function flakyApi(): { api: ControllerApi; state: { down: boolean; agents: any[] } } {
  const state = { down: true, agents: [] as any[] };
  const unreachable = () => new ApiError('Manager unreachable', 502, 'REMOTE_UNAVAILABLE');
  const api = {
    clients: async () => [{ id: 'local', name: 'local' }],
    agents: async () => {
      if (state.down) {
        throw unreachable();
      }
      return state.agents;
    },
    catalog: async () => ({ providers: [], runtimes: [] }),
    messages: async () => [],
    createAgent: async (_client: string, request: any) => {
      if (state.agents.some(a => a.name === request.name)) {
        throw new ApiError(`An agent named '${request.name}' exists already`, 409, 'CONFLICT');
      }
      const agent = { id: `id-${request.name}`, name: request.name };
      state.agents.push(agent);
      return agent;
    }
  } as unknown as ControllerApi;
  return { api, state };
}

describe('one clear state at a time', () => {
  afterEach(() => vi.useRealTimers());

  it('says "Manager unreachable" in the status line, not also a green Connected', async () => {
    const { api } = flakyApi();
    const { model } = setUp(api);
    await model.load();
    expect(model.status).toEqual({ state: 'remote-down', text: 'Manager unreachable' });
    expect(model.notice).toBeNull(); // said once, by the status line
    expect(model.catalog).toBeNull(); // so + is disabled, and the empty text says why
    expect(model.emptyText).toMatch(/^Manager unreachable/);
    expect(model.emptyText).not.toMatch(/create one/);
  });

  it('asks again by itself and clears the state once the manager answers', async () => {
    vi.useFakeTimers();
    const { api, state } = flakyApi();
    const { model } = setUp(api);
    await model.load();
    state.down = false;
    await vi.advanceTimersByTimeAsync(RETRY_MS);
    expect(model.status).toEqual({ state: 'connected', text: 'Connected' });
    expect(model.emptyText).toBe('No agent yet: create one with +.');
  });

  it('says why there is no agent while loading', async () => {
    const { model } = setUp(flakyApi().api);
    expect(model.emptyText).toBe('Loading…'); // before the first load
  });

  it('puts the socket first: nothing is known of a manager while it is down', () => {
    const status = { socket: 'reconnecting' as const, attempt: 3, remotes: new Map(), error: null };
    expect(statusView(status, 'local', true)).toEqual({
      state: 'reconnecting', text: 'Reconnecting (attempt 3)…'
    });
    const linkDown = { ...status, socket: 'connected' as const, remotes: new Map([['local', 2]]) };
    expect(statusView(linkDown, 'local', false).text).toBe(
      'Manager unreachable, reconnecting (attempt 2)…'
    );
    expect(statusView(linkDown, 'other', false).state).toBe('connected');
  });

  it("gives the form the manager's refusal, and no notice that would outlive the fix", async () => {
    const { api, state } = flakyApi();
    state.down = false;
    state.agents.push({ id: 'a1', name: 'assistant' });
    const { model } = setUp(api);
    await model.load();
    expect(await model.createAgent({ name: 'assistant', provider: 'echo' })).toMatch(
      /exists already/
    );
    expect(model.notice).toBeNull();
    expect(await model.createAgent({ name: 'helper', provider: 'echo' })).toBeNull();
    expect(model.selection.agentId).toBe('id-helper');
    expect(model.notice).toBeNull();
  });
});
