import { describe, expect, it } from 'vitest';

import { AUTOMATIC, canTake, hostOptions, hostState, placementOf } from '../src/hosts';
import { IClient } from '../src/protocol';

function client(id: string, health: Partial<NonNullable<IClient['health']>>,
  labels: string[] = []): IClient {
  return {
    id, name: id, labels,
    health: { state: 'up', agents: 0, capacity: null, error: null, checkedAt: '', ...health }
  };
}

describe('hosts', () => {
  const up = client('alpha', { agents: 3, capacity: 10 }, ['gpu']);
  const full = client('beta', { agents: 2, capacity: 2 }, ['gpu', 'big']);
  const down = client('gamma', { state: 'down', agents: null, error: 'Manager unreachable' });
  const open = client('local', { agents: 1 });

  it('says each host\'s state', () => {
    expect(hostState(up)).toBe('up, 3 of 10 agents');
    expect(hostState(full)).toBe('up, 2 of 2 agents (full)');
    expect(hostState(down)).toBe('down: Manager unreachable');
    expect(hostState(open)).toBe('up, 1 agent');
    expect(hostState({ id: 'x', name: 'x' })).toBe('state unknown');
  });

  it('offers automatic, each label, and every host; down and full ones not chosen', () => {
    const options = hostOptions([up, full, down, open]);
    expect(options.map(o => o.value)).toEqual(
      [AUTOMATIC, 'label:big', 'label:gpu', 'alpha', 'beta', 'gamma', 'local']);
    const disabled = options.filter(o => o.disabled).map(o => o.value);
    expect(disabled).toEqual(['label:big', 'beta', 'gamma']); // big: only on a full host
    expect(options.find(o => o.value === 'gamma')?.label).toBe('gamma (down: Manager unreachable)');
    expect([up, full, down, open].map(canTake)).toEqual([true, false, false, true]);
  });

  it('turns the choice into the placement the controller is asked for', () => {
    expect(placementOf(AUTOMATIC)).toEqual({});
    expect(placementOf('label:gpu')).toEqual({ label: 'gpu' });
    expect(placementOf('alpha')).toEqual({ clientId: 'alpha' });
  });
});

describe('creating an agent on another host', () => {
  it('asks the controller to place it, then shows the host it went to, selected', async () => {
    const { ChatConnection } = await import('../src/connection');
    const { SidebarModel } = await import('../src/model');
    const { ChatStore } = await import('../src/state');
    const { FakeSocket } = await import('./fakes');
    const agents: Record<string, any[]> = { local: [{ id: 'a1', name: 'assistant' }], remote: [] };
    const placed: any[] = [];
    const api = {
      clients: async () => [{ id: 'local', name: 'local' }, { id: 'remote', name: 'remote' }],
      agents: async (clientId: string) => agents[clientId],
      catalog: async () => ({ providers: [], runtimes: [] }),
      messages: async () => [],
      placeAgent: async (request: any, placement: any) => {
        placed.push({ request, placement });
        agents.remote.push({ id: 'b9', name: request.name });
        return { id: 'b9', name: request.name, clientId: 'remote' };
      }
    } as any;
    const socket = new FakeSocket();
    socket.connect();
    const model = new SidebarModel(api, new ChatConnection(socket, new ChatStore(),
      () => Promise.resolve([])));
    await model.load({ clientId: 'local', agentId: 'a1' });
    const problem = await model.createAgent({ name: 'far', provider: 'echo' }, {});
    expect(problem).toBeNull();
    expect(placed).toEqual([{ request: { name: 'far', provider: 'echo' }, placement: {} }]);
    expect(model.selection).toEqual({ clientId: 'remote', agentId: 'b9' });
    expect(model.agents.map(a => a.id)).toEqual(['b9']);
  });
});
