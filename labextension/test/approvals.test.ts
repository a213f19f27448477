/// <reference types="node" />
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { beforeEach, describe, expect, it } from 'vitest';

import { ControllerApi } from '../src/api';
import {
  expiresText,
  namesOf,
  optionLabel,
  optionTitle,
  resolutionText
} from '../src/approvals';
import { ChatConnection } from '../src/connection';
import { cachedLineDiff, DIFF_CACHE_SIZE, diffRows, lineDiff } from '../src/diff';
import { SidebarModel } from '../src/model';
import { agentCreateRequest, approvalsOf, IChatMessage, IProviderInfo } from '../src/protocol';
import { Signal } from '@lumino/signaling';

import {
  ContentEdits,
  documentPaths,
  ICellChange,
  INotebookChange,
  IOpenDocument,
  keptNotice,
  metadataToKeep,
  reloadDocuments
} from '../src/reload';
import {
  agentKey,
  ChatStore,
  diffPartsOf,
  IFilesChangedEvent,
  MAX_PERMISSION_CARDS,
  MAX_WAITING_REQUESTS,
  permissionPartsOf,
  toolsOf,
  Transcript
} from '../src/state';
import { agentMessage, FakeSocket, settle, userMessage } from './fakes';

const KEY = agentKey('local', 'a1');

function request(requestId: string, extra: object = {}) {
  return {
    requestId,
    title: `Write ${requestId}.txt`,
    kind: 'edit',
    paths: [`${requestId}.txt`],
    diff: [{ path: `${requestId}.txt`, oldText: 'a\n', newText: 'b\n' }],
    options: [
      { optionId: 'allow', name: 'Allow', kind: 'allow_once' },
      { optionId: 'reject', name: 'Reject', kind: 'reject_once' }
    ],
    expiresAt: new Date(Date.now() + 600_000).toISOString(),
    ...extra
  };
}

function chatEvent(kind: string, payload: object, sequence: number, correlationId = 'c1') {
  return { agentId: 'a1', correlationId, kind, payload, sequence };
}

function forwarded(event: string, payload: any) {
  return { event, payload, agentId: 'a1', clientId: 'local' };
}

describe('permission requests in a transcript', () => {
  it('keeps a pending request until its resolution comes', () => {
    const transcript = new Transcript();
    transcript.add(userMessage(1));
    expect(transcript.apply(chatEvent('permissionRequest', request('r1'), 0))).toBe(true);
    expect(transcript.pendingRequests.map(c => c.requestId)).toEqual(['r1']);
    expect(transcript.cardsOf('c1')[0].request?.diff?.[0].newText).toBe('b\n');
    expect(transcript.busy).toBe(true);

    const resolved = { requestId: 'r1', optionId: 'allow', outcome: 'allowed', by: 'user', user: 'alice' };
    expect(transcript.apply(chatEvent('permissionResolved', resolved, 1))).toBe(true);
    expect(transcript.pendingRequests).toEqual([]);
    expect(transcript.cardsOf('c1')[0].resolved?.user).toBe('alice');
    // A second resolution of the same request changes nothing (first answer wins).
    const again = { ...resolved, outcome: 'rejected', user: 'bob' };
    expect(transcript.apply(chatEvent('permissionResolved', again, 2))).toBe(false);
    expect(transcript.cardsOf('c1')[0].resolved?.user).toBe('alice');
  });

  it('keeps one card for a request sent again at login, whatever its sequence', () => {
    const transcript = new Transcript();
    transcript.apply(chatEvent('assistantDelta', { delta: 'x' }, 5));
    expect(transcript.apply(chatEvent('permissionRequest', request('r1'), 6))).toBe(true);
    // The re-send after a reconnect carries the same sequence, or an older one.
    expect(transcript.apply(chatEvent('permissionRequest', request('r1'), 6))).toBe(false);
    expect(transcript.apply(chatEvent('permissionRequest', request('r1'), 2))).toBe(false);
    expect(transcript.permissions.size).toBe(1);
    // It did not move the turn's order: the next delta still counts.
    expect(transcript.apply(chatEvent('assistantDelta', { delta: 'y' }, 7))).toBe(true);
    expect(transcript.live.get('c1')?.text).toBe('xy');
  });

  it('drops malformed requests and those of answered turns', () => {
    const transcript = new Transcript();
    expect(transcript.apply(chatEvent('permissionRequest', { title: 'no id' }, 0))).toBe(false);
    expect(transcript.apply(chatEvent('permissionRequest', { requestId: 'x' }, 0))).toBe(false);
    transcript.add(userMessage(1));
    transcript.add(agentMessage(2, 'c1'));
    expect(transcript.apply(chatEvent('permissionRequest', request('late'), 3))).toBe(false);
    expect(transcript.permissions.size).toBe(0);
  });

  it('lets the stored answer replace its cards (its parts tell the outcome)', () => {
    const transcript = new Transcript();
    transcript.add(userMessage(1));
    transcript.apply(chatEvent('permissionRequest', request('r1'), 0));
    transcript.apply(chatEvent('permissionRequest', request('other'), 0, 'c9'));
    transcript.add(agentMessage(2, 'c1'));
    expect([...transcript.permissions.keys()]).toEqual(['other']);
  });

  it('is bounded: settled cards go first', () => {
    const transcript = new Transcript();
    transcript.apply(chatEvent('permissionRequest', request('first'), 0));
    transcript.apply(chatEvent('permissionRequest', request('settled'), 1));
    transcript.apply(
      chatEvent('permissionResolved', { requestId: 'settled', outcome: 'rejected', by: 'timeout' }, 2)
    );
    for (let i = 0; i < MAX_PERMISSION_CARDS - 1; i++) {
      transcript.apply(chatEvent('permissionRequest', request(`r${i}`), 3 + i));
    }
    expect(transcript.permissions.size).toBe(MAX_PERMISSION_CARDS);
    expect(transcript.permissions.has('settled')).toBe(false);
    expect(transcript.permissions.has('first')).toBe(true);
    // Nothing settled is left: a waiting request is never dropped, however many come.
    transcript.apply(chatEvent('permissionRequest', request('more'), 99));
    expect(transcript.permissions.has('first')).toBe(true);
    expect(transcript.permissions.has('more')).toBe(true);
    expect(transcript.permissions.size).toBe(MAX_PERMISSION_CARDS + 1);
  });

  it('keeps every waiting card in a flood of settled ones', () => {
    const transcript = new Transcript();
    for (let i = 0; i < MAX_WAITING_REQUESTS; i++) {
      transcript.apply(chatEvent('permissionRequest', request(`wait${i}`), i));
    }
    // A flood of policy decisions after them (each settles at once).
    for (let i = 0; i < 5 * MAX_PERMISSION_CARDS; i++) {
      const resolved = { requestId: `p${i}`, outcome: 'allowed', by: 'policy', title: 'Read' };
      transcript.apply(chatEvent('permissionResolved', resolved, 100 + i));
    }
    expect(transcript.permissions.size).toBe(MAX_PERMISSION_CARDS);
    expect(transcript.pendingRequests.map(card => card.requestId)).toEqual(
      Array.from({ length: MAX_WAITING_REQUESTS }, (_, i) => `wait${i}`)
    );
    // The newest settled ones stay, as many as fit beside the waiting ones.
    const last = 5 * MAX_PERMISSION_CARDS - 1;
    expect(transcript.permissions.has(`p${last}`)).toBe(true);
    expect(transcript.permissions.has('p0')).toBe(false);
  });

  it('has room for every request the manager lets one agent have waiting', () => {
    // agenstra_jupyter/manager/approvals.py: MAX_PENDING, the broker's limit per agent.
    const source = readFileSync(
      fileURLToPath(new URL('../../agenstra_jupyter/manager/approvals.py', import.meta.url)),
      'utf-8'
    );
    const limit = Number(/^MAX_PENDING = (\d+)/m.exec(source)?.[1]);
    expect(limit).toBe(MAX_WAITING_REQUESTS);
    expect(MAX_PERMISSION_CARDS).toBeGreaterThan(MAX_WAITING_REQUESTS);
  });

  it('shows a policy decision nobody was asked about as one line', () => {
    const transcript = new Transcript();
    const resolved = { requestId: 'p1', outcome: 'allowed', by: 'policy', title: 'Read notebook.ipynb' };
    expect(transcript.apply(chatEvent('permissionResolved', resolved, 0))).toBe(true);
    const card = transcript.cardsOf('c1')[0];
    expect(resolutionText(card.resolved!, card.request?.title ?? card.resolved!.title)).toBe(
      'Allowed by policy: Read notebook.ipynb'
    );
    expect(transcript.pendingRequests).toEqual([]);
  });
});

describe('what option buttons say', () => {
  it('shows the agent\'s own names when they match what the option does', () => {
    expect(optionLabel({ name: 'Always Allow', kind: 'allow_always' })).toBe('Always Allow');
    expect(optionLabel({ name: 'Allow edits this session', kind: 'allow_always' }))
      .toBe('Allow edits this session');
    expect(optionLabel({ name: 'No', kind: 'reject_once' })).toBe('No');
    expect(optionTitle({ name: 'Always Allow', kind: 'allow_always' })).toBe('Always allow');
  });

  it('never lets a hostile agent label an allowing option as a refusal', () => {
    expect(optionLabel({ name: 'Reject', kind: 'allow_always' })).toBe('Always allow');
    expect(optionLabel({ name: 'No thanks', kind: 'allow_once' })).toBe('Allow');
    expect(optionLabel({ name: 'Yes, allow', kind: 'reject_once' })).toBe('Reject');
    expect(optionTitle({ name: 'Reject', kind: 'allow_always' }))
      .toBe('Always allow (the agent calls it "Reject")');
  });

  it('names an option the agent left unnamed by its kind', () => {
    expect(optionLabel({ name: '', kind: 'reject_always' })).toBe('Always reject');
  });
});

describe('what settled cards say', () => {
  it('names who decided what', () => {
    const line = (resolved: any) => resolutionText(resolved);
    expect(line({ outcome: 'allowed', by: 'user', user: 'alice' })).toBe('Allowed by alice');
    expect(line({ outcome: 'rejected', by: 'user', user: 'bob' })).toBe('Rejected by bob');
    expect(line({ outcome: 'expired', by: 'timeout' })).toBe('Rejected — expired');
    expect(line({ outcome: 'rejected', by: 'policy' })).toBe('Rejected by policy');
    expect(line({ outcome: 'cancelled', by: 'user' })).toBe('Cancelled — the turn stopped');
  });

  it('says "you" for an answer of this page\'s user, by any of their names', () => {
    const me = namesOf({ username: 'a1b2c3', name: 'Anonymous Io', display_name: 'Anonymous Io' });
    expect(me).toEqual(['a1b2c3', 'Anonymous Io', 'Anonymous Io']);
    const mine = { requestId: 'r1', outcome: 'allowed', by: 'user', user: 'Anonymous Io' } as const;
    expect(resolutionText(mine, 'Write a.py', me)).toBe('Allowed by you: Write a.py');
    // An older controller recorded the username.
    expect(resolutionText({ ...mine, outcome: 'rejected', user: 'a1b2c3' }, undefined, me)).toBe(
      'Rejected by you'
    );
    // Someone else, the policy, the clock: their names as before.
    expect(resolutionText({ ...mine, user: 'bob' }, undefined, me)).toBe('Allowed by bob');
    expect(resolutionText({ ...mine, by: 'policy' }, undefined, me)).toBe(
      'Allowed by policy'
    );
    expect(resolutionText({ ...mine, outcome: 'expired', by: 'timeout' }, undefined, me)).toBe(
      'Rejected — expired'
    );
    // No identity (or empty names): nobody is "you".
    expect(namesOf(undefined)).toEqual([]);
    expect(namesOf({ username: '', display_name: '' })).toEqual([]);
    expect(resolutionText({ ...mine, user: '' }, undefined, namesOf({ username: '' }))).toBe(
      'Allowed'
    );
  });

  it('counts down to the expiry', () => {
    const now = Date.parse('2026-01-01T10:00:00Z');
    expect(expiresText('2026-01-01T10:01:05Z', now)).toMatch(/^expires in 1 min 5 s \(at .+\)$/);
    expect(expiresText('2026-01-01T10:00:09Z', now)).toMatch(/^expires in 9 s/);
    expect(expiresText('2026-01-01T09:59:00Z', now)).toMatch(/^expiring/);
    expect(expiresText('not a date', now)).toBe('');
  });

  it('reads settled requests, tool diffs and diff parts from a stored answer', () => {
    const parts: any[] = [
      { kind: 'toolCall', toolCallId: 't1', name: 'write', diff: [{ path: 'a.py', oldText: '', newText: 'x' }] },
      { kind: 'toolResult', toolCallId: 't1', result: 'ok' },
      { kind: 'permission', requestId: 'r1', title: 'Write a.py', toolKind: 'edit', paths: ['a.py'],
        outcome: 'allowed', by: 'user', optionId: 'allow', user: 'alice' },
      { kind: 'diff', path: 'b.txt', oldText: 'old\n', newText: 'new\n' },
      { kind: 'diff', oldText: 'no path' }
    ];
    const [card] = permissionPartsOf(parts);
    expect(resolutionText(card.resolved!, card.request!.title)).toBe('Allowed by alice: Write a.py');
    expect(diffPartsOf(parts)).toEqual([{ path: 'b.txt', oldText: 'old\n', newText: 'new\n' }]);
    const [tool] = toolsOf(parts);
    expect(tool).toMatchObject({ id: 't1', done: true, diff: [{ path: 'a.py', newText: 'x' }] });
  });

  it('keeps one entry for a tool call announced again with its edit', () => {
    // claude-agent-acp: the Write, then the same call with its diff, then its result.
    const parts: any[] = [
      { kind: 'toolCall', toolCallId: 't1', name: 'Write', args: {} },
      { kind: 'toolCall', toolCallId: 't1', name: 'Write', args: { file_path: 'a.py' },
        diff: [{ path: 'a.py', oldText: null, newText: 'x' }] },
      { kind: 'toolResult', toolCallId: 't1', result: 'ok' }
    ];
    const tools = toolsOf(parts);
    expect(tools).toHaveLength(1);
    expect(tools[0]).toMatchObject({ id: 't1', name: 'Write', done: true,
      args: { file_path: 'a.py' }, diff: [{ path: 'a.py', newText: 'x' }] });
  });
});

describe('answering over the connection', () => {
  let socket: FakeSocket;
  let model: SidebarModel;
  let history: IChatMessage[];

  beforeEach(async () => {
    socket = new FakeSocket();
    history = [userMessage(1)];
    const api = {
      clients: async () => [{ id: 'local', name: 'local' }],
      agents: async () => [{ id: 'a1', name: 'assistant', project: 'work/proj' }],
      catalog: async () => ({ providers: [], runtimes: [] }),
      messages: async (_c: string, _a: string, after: number) => history.filter(m => m.seq > after)
    } as unknown as ControllerApi;
    const connection = new ChatConnection(socket, new ChatStore(), (c, a, after) =>
      api.messages(c, a, after)
    );
    socket.connect();
    model = new SidebarModel(api, connection);
    await model.load();
    socket.take();
  });

  it('sends permissionResponse for the agent and waits for the resolution', async () => {
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r1'), 0)));
    await model.respond('r1', 'allow');
    expect(socket.take()).toEqual([
      {
        event: 'forward',
        payload: { event: 'permissionResponse', agentId: 'a1', payload: { requestId: 'r1', optionId: 'allow' } }
      }
    ]);
    const transcript = model.store.transcript(KEY);
    expect(transcript.cardsOf('c1')[0].sent).toBe('allow'); // buttons wait for the outcome
    const resolved = { requestId: 'r1', optionId: 'allow', outcome: 'allowed', by: 'user', user: 'me' };
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionResolved', resolved, 1)));
    expect(transcript.pendingRequests).toEqual([]);
    expect(transcript.cardsOf('c1')[0].sent).toBeUndefined();
  });

  it('says "already answered" when someone else was first', async () => {
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r1'), 0)));
    socket.answer = (event, payload) =>
      payload?.event === 'permissionResponse'
        ? { ok: false, error: { code: 'UNKNOWN_REQUEST', message: 'no such request' } }
        : { ok: true };
    await model.respond('r1', 'reject');
    const card = model.store.transcript(KEY).cardsOf('c1')[0];
    expect(card.answeredElsewhere).toBe(true);
    expect(model.notice).toBeNull(); // not a failure: the other answer stands
    const resolved = { requestId: 'r1', outcome: 'allowed', by: 'user', user: 'alice' };
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionResolved', resolved, 1)));
    expect(model.store.transcript(KEY).cardsOf('c1')[0]).toMatchObject({
      answeredElsewhere: false,
      resolved: { user: 'alice' }
    });
  });

  it('gives the buttons back when the answer did not get through', async () => {
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r1'), 0)));
    socket.answer = () => ({ ok: false, error: { code: 'REMOTE_UNAVAILABLE', message: 'down' } });
    await model.respond('r1', 'allow');
    expect(model.store.transcript(KEY).cardsOf('c1')[0].sent).toBeUndefined();
    expect(model.store.transcript(KEY).pendingRequests).toHaveLength(1);
  });

  it('after a reconnect the re-sent request is the same card, still answerable', async () => {
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r1'), 3)));
    socket.drop();
    socket.connect();
    await settle();
    // The manager replays the history after afterSeq (nothing new), then the pending request.
    socket.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r1'), 3)));
    expect(model.store.transcript(KEY).pendingRequests.map(c => c.requestId)).toEqual(['r1']);
  });

  it('after a page reload the history, then the re-sent request, bring the card back', async () => {
    // A new tab: a fresh store, the same manager.
    const fresh = new FakeSocket();
    const store = new ChatStore();
    const connection = new ChatConnection(fresh, store, async () => history);
    fresh.connect();
    await connection.open('local', 'a1');
    fresh.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r2'), 4)));
    fresh.fire('forwardedEvent', forwarded('chatEvent', chatEvent('permissionRequest', request('r2'), 4)));
    const transcript = store.transcript(KEY);
    expect(transcript.pendingRequests.map(c => c.requestId)).toEqual(['r2']);
    expect(transcript.busy).toBe(true);
  });

  it('reports files a turn changed with the agent it belongs to', () => {
    const changes: IFilesChangedEvent[] = [];
    model.store.filesChanged.connect((_, change) => changes.push(change));
    const event = chatEvent('filesChanged', { paths: ['a.txt', 7, 'nb.ipynb'] }, 4);
    socket.fire('forwardedEvent', forwarded('chatEvent', event));
    socket.fire('forwardedEvent', forwarded('chatEvent', event)); // a replay: once only
    expect(changes).toEqual([{ key: KEY, paths: ['a.txt', 'nb.ipynb'] }]);
    expect(documentPaths(model.projectOf(KEY), changes[0].paths)).toEqual([
      'work/proj/a.txt',
      'work/proj/nb.ipynb'
    ]);
  });
});

describe('live reload', () => {
  it('maps workspace paths into the project, and nothing for a private workspace', () => {
    expect(documentPaths('proj', ['a.txt', './sub/b.py', 'sub//c.md'])).toEqual([
      'proj/a.txt',
      'proj/sub/b.py',
      'proj/sub/c.md'
    ]);
    expect(documentPaths('proj/', ['a.txt', 'a.txt'])).toEqual(['proj/a.txt']);
    expect(documentPaths('proj', ['../secret', '/etc/passwd', '', 'x/../../y'])).toEqual([]);
    expect(documentPaths(null, ['a.txt'])).toEqual([]);
    expect(documentPaths(undefined, ['a.txt'])).toEqual([]);
  });

  it('reverts clean documents and leaves those with unsaved changes alone', async () => {
    const reverted: string[] = [];
    const doc = (path: string, dirty: boolean): IOpenDocument => ({
      path,
      dirty,
      revert: async () => void reverted.push(path)
    });
    const shared = doc('proj/a.txt', false);
    const docs = [shared, shared, doc('proj/nb.ipynb', true), doc('proj/other.py', false)];
    const outcome = await reloadDocuments(docs, ['proj/a.txt', 'proj/nb.ipynb', 'proj/gone.md']);
    expect(outcome).toEqual({ reverted: ['proj/a.txt'], kept: ['proj/nb.ipynb'], live: [] });
    expect(reverted).toEqual(['proj/a.txt']); // once, though open in two views
    expect(keptNotice('proj/nb.ipynb')).toBe('proj/nb.ipynb changed on disk; you have unsaved changes');
  });

  it('never reverts a shared document (real-time collaboration): it is live already', async () => {
    const reverted: string[] = [];
    const live = (path: string, dirty: boolean): IOpenDocument => ({
      path,
      dirty,
      edited: false,
      collaborative: true,
      revert: async () => void reverted.push(path)
    });
    const docs = [live('proj/nb.ipynb', false), live('proj/typed.ipynb', true)];
    const outcome = await reloadDocuments(docs, ['proj/nb.ipynb', 'proj/typed.ipynb']);
    expect(outcome).toEqual({ reverted: [], kept: [], live: ['proj/nb.ipynb', 'proj/typed.ipynb'] });
    expect(reverted).toEqual([]);
  });
});

/** A shared notebook with the signals ContentEdits listens to (@jupyter/ydoc's shape). */
class FakeCell {
  readonly changed = new Signal<this, ICellChange>(this);
}

class FakeNotebook {
  readonly changed = new Signal<this, INotebookChange>(this);
  constructor(readonly cells: FakeCell[]) {}
  /** What YNotebook.setSource does: cells replaced, then the model is clean. */
  load(cells: FakeCell[]): void {
    this.changed.emit({ cellsChange: [{ delete: this.cells.length }, { insert: cells }] });
    this.cells.splice(0, this.cells.length, ...cells);
    this.clean();
  }
  clean(): void {
    this.changed.emit({ stateChange: [{ name: 'dirty', newValue: false }] });
  }
  /** What a starting kernel does (@jupyter/ydoc's MapChanges: a Map of the keys changed). */
  kernelStarted(): void {
    this.metadata(['kernelspec', 'language_info']);
    this.changed.emit({ stateChange: [{ name: 'dirty', newValue: true }] });
  }
  metadata(keys: string[]): void {
    this.changed.emit({ metadataChange: keysChanged(keys) });
  }
}

function keysChanged(keys: string[]): Map<string, { action: 'add'; oldValue: unknown }> {
  return new Map(keys.map(key => [key, { action: 'add' as const, oldValue: undefined }]));
}

describe('what counts as the user\'s edit of a notebook', () => {
  it('metadata written by a starting kernel is not; cells and their contents are', () => {
    const first = new FakeCell();
    const notebook = new FakeNotebook([first]);
    const edits = new ContentEdits(notebook);
    notebook.load([first]);
    expect(edits.edited).toBe(false);
    notebook.kernelStarted();
    expect(edits.edited).toBe(false); // dirty, but only metadata
    first.changed.emit({ metadataChange: keysChanged(['execution', 'trusted']) }); // a run
    expect(edits.edited).toBe(false);
    first.changed.emit({ sourceChange: [{ insert: 'x' }] });
    expect(edits.edited).toBe(true); // typing in a cell
    notebook.clean(); // saved or reverted
    expect(edits.edited).toBe(false);

    first.changed.emit({ outputsChange: [] }); // a cell ran
    expect(edits.edited).toBe(true);
    notebook.clean();
    first.changed.emit({ executionCountChange: { oldValue: null, newValue: 1 } });
    expect(edits.edited).toBe(true);
    notebook.clean();
    notebook.changed.emit({ nbformatChanged: { key: 'nbformat_minor', newValue: 5 } });
    expect(edits.edited).toBe(true);
  });

  it('counts metadata the user wrote: a cell tag, the notebook\'s own metadata', () => {
    const cell = new FakeCell();
    const notebook = new FakeNotebook([cell]);
    const edits = new ContentEdits(notebook);
    notebook.kernelStarted();
    expect(edits.edited).toBe(false);
    cell.changed.emit({ metadataChange: keysChanged(['tags']) }); // a tag added
    expect(edits.edited).toBe(true);
    notebook.clean();
    notebook.metadata(['authors']);
    expect(edits.edited).toBe(true);
    notebook.clean();
    // A cell's kernelspec is nothing JupyterLab writes: only the notebook's is exempt.
    cell.changed.emit({ metadataChange: keysChanged(['kernelspec']) });
    expect(edits.edited).toBe(true);
    notebook.clean();
    notebook.metadata(['language_info', 'title']); // JupyterLab's key with the user's
    expect(edits.edited).toBe(true);
    notebook.clean();
    notebook.changed.emit({ metadataChange: 'not a map' as any }); // unknown: the user's
    expect(edits.edited).toBe(true);
  });

  it('keeps a notebook whose only unsaved change is a tag, with the notice', async () => {
    const cell = new FakeCell();
    const notebook = new FakeNotebook([cell]);
    const edits = new ContentEdits(notebook);
    notebook.kernelStarted();
    cell.changed.emit({ metadataChange: keysChanged(['tags']) });
    const reverted: string[] = [];
    const doc: IOpenDocument = {
      path: 'proj/tagged.ipynb',
      dirty: true,
      edited: edits.edited,
      revert: async () => void reverted.push('proj/tagged.ipynb')
    };
    const outcome = await reloadDocuments([doc], ['proj/tagged.ipynb']);
    expect(outcome).toEqual({ reverted: [], kept: ['proj/tagged.ipynb'], live: [] });
    expect(reverted).toEqual([]);
    expect(keptNotice('proj/tagged.ipynb')).toBe(
      'proj/tagged.ipynb changed on disk; you have unsaved changes'
    );
  });

  it('watches cells added after it started, and counts adding or removing one', () => {
    const notebook = new FakeNotebook([]);
    const edits = new ContentEdits(notebook);
    const added = new FakeCell();
    notebook.changed.emit({ cellsChange: [{ insert: [added] }] });
    expect(edits.edited).toBe(true);
    notebook.clean();
    added.changed.emit({ sourceChange: [{ insert: 'y' }] });
    expect(edits.edited).toBe(true); // the added cell is watched
    notebook.clean();
    notebook.changed.emit({ cellsChange: [{ delete: 1 }] });
    expect(edits.edited).toBe(true);
    // A reload from disk replaces every cell and ends clean: nothing of the user's left.
    const loaded = new FakeCell();
    notebook.load([loaded]);
    expect(edits.edited).toBe(false);
    loaded.changed.emit({ attachmentsChange: {} });
    expect(edits.edited).toBe(true);
  });

  it('reverts a notebook dirty only with metadata, keeps one the user edited', async () => {
    const reverted: string[] = [];
    const doc = (path: string, dirty: boolean, edited?: boolean): IOpenDocument => ({
      path,
      dirty,
      edited,
      revert: async () => void reverted.push(path)
    });
    const docs = [
      doc('proj/kernel.ipynb', true, false), // a kernel started: metadata only
      doc('proj/typed.ipynb', true, true),
      doc('proj/a.txt', true), // a file: every unsaved change is the user's
      doc('proj/clean.ipynb', false, false)
    ];
    const paths = docs.map(d => d.path);
    const outcome = await reloadDocuments(docs, paths);
    expect(outcome).toEqual({
      reverted: ['proj/kernel.ipynb', 'proj/clean.ipynb'],
      kept: ['proj/typed.ipynb', 'proj/a.txt'],
      live: []
    });
    expect(reverted).toEqual(outcome.reverted);
  });

  it('puts the running kernel\'s metadata back after a revert, nothing else', () => {
    const kernel = {
      kernelspec: { name: 'python3', display_name: 'Python 3' },
      language_info: { name: 'python', version: '3.12' },
      tags: ['mine']
    };
    // The file had none: JupyterLab's empty placeholders are replaced.
    const placeholders = { kernelspec: { name: '', display_name: '' }, language_info: { name: '' } };
    expect(metadataToKeep(kernel, placeholders)).toEqual({
      kernelspec: kernel.kernelspec,
      language_info: kernel.language_info
    });
    expect(metadataToKeep(kernel, {})).toEqual({
      kernelspec: kernel.kernelspec,
      language_info: kernel.language_info
    });
    // The file names a kernel (the agent's, or one saved before): the file wins.
    const r = { kernelspec: { name: 'ir', display_name: 'R' }, language_info: { name: 'R' } };
    expect(metadataToKeep(kernel, r)).toEqual({});
    // Nothing known before: nothing to keep.
    expect(metadataToKeep({}, placeholders)).toEqual({});
  });
});

describe('the line diff', () => {
  it('finds the changed lines between common ones', () => {
    const diff = lineDiff('a\nb\nc\nd\n', 'a\nB\nc\nd\ne\n');
    expect(diff.lines.map(l => l.op + l.text)).toEqual([' a', '-b', '+B', ' c', ' d', '+e']);
    expect(diff).toMatchObject({ added: 2, removed: 1, whole: false });
  });

  it('treats a new file and a deleted file as all added / all removed', () => {
    expect(lineDiff('', 'x\ny')).toMatchObject({ added: 2, removed: 0 });
    expect(lineDiff('x\ny\n', '')).toMatchObject({ added: 0, removed: 2 });
    expect(lineDiff('same\n', 'same\n')).toMatchObject({ added: 0, removed: 0 });
  });

  it('finds a minimal diff (longest common subsequence)', () => {
    const diff = lineDiff('x\na\nb\nc\ny', 'x\nb\nc\na\ny');
    expect(diff.added + diff.removed).toBe(2);
  });

  it('falls back to "whole file replaced" past its size cap', () => {
    const old = Array.from({ length: 50 }, (_, i) => `old ${i}`).join('\n');
    const fresh = Array.from({ length: 50 }, (_, i) => (i % 2 ? `old ${i}` : `new ${i}`)).join('\n');
    const capped = lineDiff(old, fresh, 100);
    // The common last line is kept; the 49 lines before it are replaced whole.
    expect(capped).toMatchObject({ whole: true, added: 49, removed: 49 });
    expect(lineDiff(old, fresh)).toMatchObject({ whole: false, added: 25, removed: 25 });
  });

  it('keeps a few lines of context around changes and counts the rest', () => {
    const old = Array.from({ length: 20 }, (_, i) => `line ${i}`).join('\n');
    const fresh = old.replace('line 10', 'line ten');
    const rows = diffRows(lineDiff(old, fresh).lines, 2);
    expect(rows[0]).toEqual({ skipped: 8 });
    expect(rows.slice(1, 7).map((r: any) => r.op + r.text)).toEqual([
      ' line 8', ' line 9', '-line 10', '+line ten', ' line 11', ' line 12'
    ]);
    expect(rows[7]).toEqual({ skipped: 7 });
  });
});

describe('diffs while a turn streams', () => {
  it('are computed once per before/after, though every render brings new objects', () => {
    const before = ['a', 'b', 'c'].map(line => `${line}\n`).join('');
    const parts = () => [
      { kind: 'diff', path: 'x.py', oldText: before, newText: `${before}d\n` }
    ];
    const first = diffPartsOf(parts() as any)[0];
    const again = diffPartsOf(parts() as any)[0]; // the next token's render
    expect(again).not.toBe(first); // what kept useMemo([diff]) from ever hitting
    const result = cachedLineDiff(first.oldText, first.newText);
    expect(result).toMatchObject({ added: 1, removed: 0 });
    // Equal texts in other strings: the same result, the LCS did not run again.
    expect(cachedLineDiff(again.oldText.slice(0), `${'a\nb\nc\n'}d\n`)).toBe(result);
    expect(lineDiff(first.oldText, first.newText)).not.toBe(result); // lineDiff itself: fresh
  });

  it('remembers a bounded number, the least recently used going first', () => {
    const kept = cachedLineDiff('keep\n', 'kept\n');
    const old = cachedLineDiff('old\n', 'new\n');
    for (let i = 0; i < DIFF_CACHE_SIZE - 1; i++) {
      cachedLineDiff(`${i}\n`, `${i + 1}\n`);
      expect(cachedLineDiff('keep\n', 'kept\n')).toBe(kept); // used: stays
    }
    expect(cachedLineDiff('old\n', 'new\n')).not.toBe(old); // unused: dropped, recomputed
    expect(cachedLineDiff('old\n', 'new\n')).toEqual(old);
  });
});

describe('the create request', () => {
  it('carries the project and a permissions choice', () => {
    expect(agentCreateRequest('a', 'acp', '', '', '', { project: './work/proj/', permissions: 'workspace' }))
      .toEqual({ name: 'a', provider: 'acp', project: 'work/proj', config: { permissions: 'workspace' } });
  });

  it('sends neither for an empty folder and the default policy', () => {
    expect(agentCreateRequest('a', 'echo', '', '', '', { project: '  ', permissions: 'ask' })).toEqual({
      name: 'a',
      provider: 'echo'
    });
  });

  it('lets a permissions key written in the config win', () => {
    const request = agentCreateRequest('a', 'acp', '', '', '{"permissions": "deny"}', {
      permissions: 'allow'
    });
    expect(request).toMatchObject({ config: { permissions: 'deny' } });
  });
});

describe('what the form says about approvals', () => {
  const cli: IProviderInfo = {
    name: 'cli',
    description: 'CLI agents',
    capabilities: [],
    presets: [
      { name: 'claude', approvals: 'interactive', approvalsNote: 'asks you' },
      { name: 'codex', approvals: 'policy', approvalsNote: 'decided up front' }
    ]
  };

  it('follows the preset the config names', () => {
    expect(approvalsOf(cli, '{"preset": "codex"}')).toEqual({
      approvals: 'policy',
      note: 'decided up front'
    });
    expect(approvalsOf(cli, '{"preset": "claude"}').approvals).toBe('interactive');
    expect(approvalsOf(cli, '{"preset": ')).toEqual({ approvals: undefined, note: undefined });
  });

  it('takes the approvals of a provider without presets', () => {
    const acp = { name: 'acp', description: '', capabilities: [], approvals: 'interactive' as const };
    expect(approvalsOf(acp, '').approvals).toBe('interactive');
    expect(approvalsOf(undefined, '')).toEqual({ approvals: undefined, note: undefined });
  });
});
