import { describe, expect, it } from 'vitest';

import { agentKey, ChatStore, runningText, toolsOf, Transcript } from '../src/state';
import { agentMessage, userMessage } from './fakes';

describe('Transcript', () => {
  it('keeps one copy of a message replayed after a reconnect', () => {
    const transcript = new Transcript();
    const question = userMessage(1);
    expect(transcript.add(question)).toBe(true);
    expect(transcript.add({ ...question })).toBe(false);
    expect(transcript.messages).toHaveLength(1);
  });

  it('orders messages by seq whatever order they arrive in', () => {
    const transcript = new Transcript();
    [3, 1, 4, 2].forEach(seq => transcript.add(userMessage(seq)));
    expect(transcript.messages.map(m => m.seq)).toEqual([1, 2, 3, 4]);
    expect(transcript.lastSeq).toBe(4);
  });

  it('ignores what is not a stored message', () => {
    const transcript = new Transcript();
    expect(transcript.add({ id: 'x' } as any)).toBe(false);
    expect(transcript.add(null as any)).toBe(false);
    expect(transcript.messages).toHaveLength(0);
  });

  it('shows a sent message until its stored copy replaces it', () => {
    const transcript = new Transcript();
    transcript.addPending('c1', 'hello');
    expect(transcript.busy).toBe(true);
    transcript.add(userMessage(1, 'hello'));
    expect(transcript.pending.size).toBe(0);
    expect(transcript.openTurns).toEqual(['c1']);
    transcript.add(agentMessage(2, 'c1'));
    expect(transcript.busy).toBe(false);
  });

  it('builds a live turn from deltas and drops it for the stored answer', () => {
    const transcript = new Transcript();
    const event = (sequence: number, kind: string, payload: object) => ({
      agentId: 'a1', correlationId: 'c1', kind, payload, sequence
    });
    transcript.apply(event(0, 'assistantDelta', { delta: 'Hel' }));
    transcript.apply(event(1, 'assistantDelta', { delta: 'lo' }));
    expect(transcript.apply(event(1, 'assistantDelta', { delta: 'lo' }))).toBe(false);
    transcript.apply(event(2, 'status', { message: 'thinking' }));
    expect(transcript.live.get('c1')).toMatchObject({ text: 'Hello', status: 'thinking' });

    transcript.add(agentMessage(2, 'c1', 'Hello'));
    expect(transcript.live.size).toBe(0);
    // A late event of an answered turn does not bring the live turn back.
    expect(transcript.apply(event(3, 'assistantDelta', { delta: '!' }))).toBe(false);
    expect(transcript.live.size).toBe(0);
  });

  it('merges tool results into their calls', () => {
    const transcript = new Transcript();
    const base = { agentId: 'a1', correlationId: 'c1' };
    transcript.apply({ ...base, kind: 'toolCall', sequence: 0,
      payload: { toolCallId: 't1', name: 'bash', args: { command: 'ls' } } });
    transcript.apply({ ...base, kind: 'toolResult', sequence: 1,
      payload: { toolCallId: 't1', name: 'bash', result: 'a.txt', isError: false } });
    expect(transcript.live.get('c1')!.tools).toEqual([
      { id: 't1', name: 'bash', args: { command: 'ls' }, result: 'a.txt', isError: false, done: true }
    ]);
  });

  it('reads tool activity of a stored answer from its parts', () => {
    const tools = toolsOf([
      { kind: 'text', text: 'Let me look' },
      { kind: 'toolCall', toolCallId: 't1', name: 'read', args: { path: 'x' } },
      { kind: 'toolResult', toolCallId: 't1', name: 'read', result: 'boom', isError: true }
    ]);
    expect(tools).toHaveLength(1);
    expect(tools[0]).toMatchObject({ name: 'read', isError: true, done: true });
  });
});

describe('ChatStore', () => {
  const key = agentKey('local', 'a1');

  it('counts history as read and later answers as unread until viewed', () => {
    const store = new ChatStore();
    store.load(key, [userMessage(1), agentMessage(2, 'c1')]);
    expect(store.unread(key)).toBe(0);

    store.receive(key, 'chatMessage', userMessage(3));
    store.receive(key, 'chatMessage', agentMessage(4, 'c3'));
    expect(store.unread(key)).toBe(1);
    expect(store.totalUnread()).toBe(1);

    store.setViewed(key);
    expect(store.unread(key)).toBe(0);
    store.receive(key, 'chatMessage', agentMessage(5, 'c3'));
    expect(store.unread(key)).toBe(0); // arrives while in view
  });

  it('resumes unread counting from a remembered position', () => {
    const store = new ChatStore();
    store.restoreReadSeq(key, 2);
    store.load(key, [userMessage(1), agentMessage(2, 'c1'), userMessage(3), agentMessage(4, 'c3')]);
    expect(store.unread(key)).toBe(1);
  });

  it('signals each change once and never for a duplicate', () => {
    const store = new ChatStore();
    const seen: string[] = [];
    store.changed.connect((_, changed) => seen.push(changed));
    const message = agentMessage(1, 'c1');
    store.receive(key, 'chatMessage', message);
    store.receive(key, 'chatMessage', { ...message });
    store.receive(key, 'somethingElse', {});
    expect(seen).toEqual([key]);
  });
});

describe('a running turn', () => {
  const event = (kind: string, payload: any, sequence: number) => ({
    agentId: 'a1', correlationId: 'c1', kind, payload, sequence
  });

  it('is shown as command output once a status says its format is text', () => {
    const transcript = new Transcript();
    transcript.apply(event('assistantDelta', { delta: '# not a heading' }, 0));
    expect(transcript.live.get('c1')!.format).toBe('markdown');
    transcript.apply(event('status', { message: 'running', format: 'text' }, 1));
    transcript.apply(event('status', { message: 'still running' }, 2)); // keeps the format
    const turn = transcript.live.get('c1')!;
    expect(turn.format).toBe('text');
    expect(turn.status).toBe('still running');
  });

  it('counts from when the panel saw it start', () => {
    const before = Date.now();
    const transcript = new Transcript();
    transcript.apply(event('status', { message: 'running' }, 0));
    const startedAt = transcript.live.get('c1')!.startedAt;
    expect(startedAt).toBeGreaterThanOrEqual(before);
    expect(startedAt).toBeLessThanOrEqual(Date.now());
  });

  it('says how long it has run, with its status when that says more', () => {
    expect(runningText(undefined, 0)).toBe('running 0 s');
    expect(runningText('running', 12_400)).toBe('running 12 s');
    expect(runningText('starting claude', 3_000)).toBe('starting claude · running 3 s');
    expect(runningText(undefined, 125_000)).toBe('running 2 min 5 s');
    expect(runningText(undefined, -50)).toBe('running 0 s'); // clocks never go back on screen
  });
});
