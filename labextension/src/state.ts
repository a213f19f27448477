/**
 * Chat state, free of DOM and sockets: transcripts kept in `seq` order without
 * duplicates, live turns built from streamed events, unread counts.
 */

import { ISignal, Signal } from '@lumino/signaling';

import {
  ChatEventKind,
  IChatEvent,
  IChatMessage,
  IFileDiff,
  IPart,
  IPermissionRequest,
  IPermissionResolved,
  ManagerEvent,
  ResponseFormat,
  responseFormat
} from './protocol';

/** A tool call of a turn, merged with its result once that arrives. */
export interface IToolActivity {
  id: string;
  name: string;
  args?: unknown;
  result?: unknown;
  isError?: boolean;
  done: boolean;
  /** The edits the call makes (ACP `diff` content). */
  diff?: IFileDiff[];
}

/** A permission request of a turn, as the transcript shows it: a card, then one line. */
export interface IPermissionCard {
  requestId: string;
  correlationId: string;
  /** Absent when a policy settled a request nobody was asked about. */
  request?: IPermissionRequest;
  resolved?: IPermissionResolved;
  /** The option this panel sent, while the manager has not resolved the request yet. */
  sent?: string;
  /** This panel's answer came too late: someone (or something) else settled it first. */
  answeredElsewhere?: boolean;
}

/** Requests one agent may have waiting (the manager's approvals.MAX_PENDING). */
export const MAX_WAITING_REQUESTS = 16;
/**
 * The permission cards one transcript keeps. Only settled cards are ever dropped (a waiting
 * request dropped could never be answered from this page): this many holds every request
 * the manager lets one agent have waiting, and as many settled ones besides.
 */
export const MAX_PERMISSION_CARDS = 2 * MAX_WAITING_REQUESTS;

/** An answer being streamed: what the agent said and did so far. */
export interface ILiveTurn {
  correlationId: string;
  text: string;
  tools: IToolActivity[];
  status?: string;
  /** `text` once an event said so (command output): shown preformatted. */
  format: ResponseFormat;
  /** When this panel saw the turn start (ms): what "running 12 s" counts from. */
  startedAt: number;
  lastSequence: number;
}

/** A message sent from this panel that the manager has not stored yet. */
export interface IPendingMessage {
  correlationId: string;
  text: string;
}

/** One agent's conversation. */
export class Transcript {
  readonly messages: IChatMessage[] = [];
  readonly live = new Map<string, ILiveTurn>();
  readonly pending = new Map<string, IPendingMessage>();
  /** Permission requests of live turns by requestId, in arrival order. */
  readonly permissions = new Map<string, IPermissionCard>();
  private readonly _ids = new Set<string>();
  private readonly _answered = new Set<string>();

  /** The highest `seq` held: what a reconnecting login asks to resume after. */
  get lastSeq(): number {
    const last = this.messages[this.messages.length - 1];
    return last ? last.seq : 0;
  }

  /** Turns sent but not answered yet, oldest first. */
  get openTurns(): string[] {
    const open = this.messages
      .filter(m => m.from === 'user' && !this._answered.has(m.correlationId))
      .map(m => m.correlationId);
    for (const id of this.pending.keys()) {
      if (!open.includes(id)) {
        open.push(id);
      }
    }
    return open;
  }

  get busy(): boolean {
    return this.openTurns.length > 0;
  }

  /** Adds a stored message; false when it is held already (a replay after reconnect). */
  add(message: IChatMessage): boolean {
    if (!isChatMessage(message) || this._ids.has(message.id)) {
      return false;
    }
    this._ids.add(message.id);
    let index = this.messages.length;
    while (index > 0 && this.messages[index - 1].seq > message.seq) {
      index--;
    }
    this.messages.splice(index, 0, message);
    if (message.from === 'user') {
      this.pending.delete(message.correlationId);
    } else {
      this._answered.add(message.correlationId);
      this.live.delete(message.correlationId);
      // The stored answer's `permission` parts tell how its requests ended.
      for (const [id, card] of this.permissions) {
        if (card.correlationId === message.correlationId) {
          this.permissions.delete(id);
        }
      }
    }
    return true;
  }

  /** Requests nobody has settled yet, oldest first. */
  get pendingRequests(): IPermissionCard[] {
    return [...this.permissions.values()].filter(card => card.request && !card.resolved);
  }

  /** The cards of one turn, in the order they came. */
  cardsOf(correlationId: string): IPermissionCard[] {
    return [...this.permissions.values()].filter(card => card.correlationId === correlationId);
  }

  /** Notes the answer this panel sent (the card waits for the manager's resolution). */
  markSent(requestId: string, optionId: string | undefined): void {
    const card = this.permissions.get(requestId);
    if (card) {
      card.sent = optionId;
    }
  }

  /** The manager no longer knew the request: another answer settled it first. */
  markAnsweredElsewhere(requestId: string): void {
    const card = this.permissions.get(requestId);
    if (card) {
      card.sent = undefined;
      card.answeredElsewhere = !card.resolved;
    }
  }

  /** Applies a streamed event; false when it is stale (its turn is answered, or seen). */
  apply(event: IChatEvent): boolean {
    if (!event || typeof event.correlationId !== 'string') {
      return false;
    }
    if (this._answered.has(event.correlationId)) {
      return false;
    }
    const turn = this._liveTurn(event.correlationId);
    if (isPermissionKind(event.kind)) {
      // Pending requests come again after the history at every login with their first
      // `sequence`: they are told apart by requestId, not by the turn's order.
      return this._permission(event.correlationId, event.kind, event.payload ?? {});
    }
    if (typeof event.sequence === 'number') {
      if (event.sequence <= turn.lastSequence) {
        return false;
      }
      turn.lastSequence = event.sequence;
    }
    applyToTurn(turn, event.kind, event.payload ?? {});
    return true;
  }

  private _liveTurn(correlationId: string): ILiveTurn {
    let turn = this.live.get(correlationId);
    if (!turn) {
      turn = {
        correlationId,
        text: '',
        tools: [],
        format: 'markdown',
        startedAt: Date.now(),
        lastSequence: -1
      };
      this.live.set(correlationId, turn);
    }
    return turn;
  }

  /** A request (dedupe by requestId) or its resolution; false when nothing changed. */
  private _permission(correlationId: string, kind: string, payload: Record<string, any>): boolean {
    const requestId = payload.requestId;
    if (typeof requestId !== 'string' || !requestId) {
      return false;
    }
    let card = this.permissions.get(requestId);
    if (kind === ChatEventKind.permissionRequest) {
      if (card?.request || card?.resolved || !Array.isArray(payload.options)) {
        return false; // seen already (a replay at login), or settled before it came
      }
      card = { requestId, correlationId, request: payload as IPermissionRequest };
    } else {
      if (card?.resolved) {
        return false;
      }
      card = { requestId, correlationId, ...card, resolved: payload as IPermissionResolved };
      card.sent = undefined;
      card.answeredElsewhere = false;
    }
    this.permissions.set(requestId, card);
    this._bound();
    return true;
  }

  /**
   * Keeps MAX_PERMISSION_CARDS by dropping the oldest settled cards; a waiting one stays
   * (more than fit would mean a manager past its own limit: they stay all the same).
   */
  private _bound(): void {
    let excess = this.permissions.size - MAX_PERMISSION_CARDS;
    for (const card of [...this.permissions.values()]) {
      if (excess <= 0) {
        break;
      }
      if (card.resolved) {
        this.permissions.delete(card.requestId);
        excess--;
      }
    }
  }

  /** Shows a message as sent until the manager's stored copy replaces it. */
  addPending(correlationId: string, text: string): void {
    this.pending.set(correlationId, { correlationId, text });
  }

  dropPending(correlationId: string): void {
    this.pending.delete(correlationId);
  }

  /** Agent messages after `seq`: what the user has not seen. */
  agentMessagesAfter(seq: number): number {
    let count = 0;
    for (let i = this.messages.length - 1; i >= 0 && this.messages[i].seq > seq; i--) {
      if (this.messages[i].from === 'agent') {
        count++;
      }
    }
    return count;
  }
}

function isPermissionKind(kind: string): boolean {
  return kind === ChatEventKind.permissionRequest || kind === ChatEventKind.permissionResolved;
}

function applyToTurn(turn: ILiveTurn, kind: string, payload: Record<string, any>): void {
  if (kind === ChatEventKind.assistantDelta) {
    turn.text += typeof payload.delta === 'string' ? payload.delta : '';
  } else if (kind === ChatEventKind.status) {
    turn.status = typeof payload.message === 'string' ? payload.message : undefined;
    if (payload.format !== undefined) {
      turn.format = responseFormat(payload);
    }
  } else {
    addToolActivity(turn.tools, kind, payload);
  }
}

/** The live line of a running turn: its status and how long it has run ("running 12 s"). */
export function runningText(status: string | undefined, elapsedMs: number): string {
  const seconds = Math.max(0, Math.floor(elapsedMs / 1000));
  const time = seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  const running = `running ${time}`;
  return status && status !== 'running' ? `${status} · ${running}` : running;
}

/** Records a tool call, or merges a result into its call (by toolCallId). */
export function addToolActivity(
  tools: IToolActivity[],
  kind: string,
  payload: Record<string, any>
): void {
  const id = String(payload.toolCallId ?? tools.length);
  const name = String(payload.name ?? 'tool');
  const diff = diffsIn(payload.diff);
  if (kind === ChatEventKind.toolCall) {
    // The same call again (its edit became known, its status changed): one entry, updated.
    const known = tools.find(t => t.id === id);
    if (known) {
      Object.assign(known, { name }, payload.args !== undefined ? { args: payload.args } : {},
        diff.length ? { diff } : {});
    } else {
      tools.push({ id, name, args: payload.args, done: false, ...(diff.length ? { diff } : {}) });
    }
  } else if (kind === ChatEventKind.toolResult) {
    const result = { result: payload.result, isError: !!payload.isError, done: true };
    const call = tools.find(t => t.id === id);
    if (call) {
      Object.assign(call, result, diff.length ? { diff } : {});
    } else {
      tools.push({ id, name, ...result, ...(diff.length ? { diff } : {}) });
    }
  }
}

/** The well-formed entries of a `diff` list (anything else is left out). */
export function diffsIn(value: unknown): IFileDiff[] {
  if (!Array.isArray(value)) {
    return [];
  }
  return value
    .filter(d => d && typeof d.path === 'string')
    .map(d => ({
      path: d.path,
      oldText: typeof d.oldText === 'string' ? d.oldText : '',
      newText: typeof d.newText === 'string' ? d.newText : ''
    }));
}

/** A stored answer's `diff` parts: the manager's before/after of each file the turn changed. */
export function diffPartsOf(parts: IPart[]): IFileDiff[] {
  return diffsIn(parts.filter(part => part?.kind === 'diff'));
}

/** A stored answer's `permission` parts as settled cards (what a finished turn shows). */
export function permissionPartsOf(parts: IPart[]): IPermissionCard[] {
  return parts
    .filter(part => part?.kind === 'permission' && typeof part.requestId === 'string')
    .map(part => ({
      requestId: part.requestId!,
      correlationId: '',
      request: {
        requestId: part.requestId!,
        title: part.title ?? 'Permission',
        kind: part.toolKind ?? 'other',
        paths: part.paths,
        options: [],
        expiresAt: ''
      },
      resolved: {
        requestId: part.requestId!,
        optionId: part.optionId,
        outcome: part.outcome ?? 'cancelled',
        by: part.by ?? 'user',
        user: part.user
      }
    }));
}

/** The tool activity of a stored answer, from its structured parts. */
export function toolsOf(parts: IPart[]): IToolActivity[] {
  const tools: IToolActivity[] = [];
  parts.forEach(part => addToolActivity(tools, part.kind, part));
  return tools;
}

function isChatMessage(message: any): message is IChatMessage {
  return (
    !!message &&
    typeof message.id === 'string' &&
    typeof message.seq === 'number' &&
    (message.from === 'user' || message.from === 'agent')
  );
}

/** Identifies an agent across managers. */
export function agentKey(clientId: string, agentId: string): string {
  return `${clientId}/${agentId}`;
}

/** Files an agent's turn changed, relative to its workspace. */
export interface IFilesChangedEvent {
  key: string;
  paths: string[];
}

/** Every transcript of this browser tab, and what of it the user has read. */
export class ChatStore {
  private readonly _transcripts = new Map<string, Transcript>();
  private readonly _filesChanged = new Signal<this, IFilesChangedEvent>(this);
  private readonly _readSeq = new Map<string, number>();
  private readonly _changed = new Signal<this, string>(this);
  private _viewed: string | null = null;

  /** Emits the key of the agent whose conversation changed. */
  get changed(): ISignal<this, string> {
    return this._changed;
  }

  /** Emits the files a turn of an opened agent changed (once per event). */
  get filesChanged(): ISignal<this, IFilesChangedEvent> {
    return this._filesChanged;
  }

  transcript(key: string): Transcript {
    let transcript = this._transcripts.get(key);
    if (!transcript) {
      transcript = new Transcript();
      this._transcripts.set(key, transcript);
    }
    return transcript;
  }

  has(key: string): boolean {
    return this._transcripts.has(key);
  }

  keys(): string[] {
    return [...this._transcripts.keys()];
  }

  forget(key: string): void {
    this._transcripts.delete(key);
    this._readSeq.delete(key);
    this._changed.emit(key);
  }

  /** Routes one manager event of an agent into its transcript. */
  receive(key: string, event: string, payload: any): void {
    const transcript = this.transcript(key);
    let changed = false;
    if (event === ManagerEvent.chatMessage) {
      changed = transcript.add(payload);
    } else if (event === ManagerEvent.chatEvent) {
      changed = transcript.apply(payload);
      if (changed && payload.kind === ChatEventKind.filesChanged) {
        const paths = (payload.payload?.paths ?? []).filter((p: unknown) => typeof p === 'string');
        this._filesChanged.emit({ key, paths });
      }
    }
    if (changed) {
      this._touch(key);
    }
  }

  /** Adds stored history; it counts as read when nothing was read before. */
  load(key: string, messages: IChatMessage[]): void {
    const transcript = this.transcript(key);
    messages.forEach(m => transcript.add(m));
    if (!this._readSeq.has(key)) {
      this._readSeq.set(key, transcript.lastSeq);
    }
    this._touch(key);
  }

  /** The agent the user is looking at (null: the panel is hidden). */
  setViewed(key: string | null): void {
    if (key === this._viewed) {
      return;
    }
    this._viewed = key;
    if (key !== null && this.unread(key) > 0) {
      this._touch(key);
    }
  }

  /** Restores where reading stopped (from the state database). */
  restoreReadSeq(key: string, seq: number): void {
    this._readSeq.set(key, seq);
  }

  /** Where reading stopped, per agent: what the state database keeps across reloads. */
  readPositions(): Record<string, number> {
    return Object.fromEntries(this._readSeq);
  }

  unread(key: string): number {
    const transcript = this._transcripts.get(key);
    const read = this._readSeq.get(key);
    return transcript && read !== undefined ? transcript.agentMessagesAfter(read) : 0;
  }

  totalUnread(): number {
    return this.keys().reduce((sum, key) => sum + this.unread(key), 0);
  }

  /** Signals a change; what the viewed agent shows counts as read. */
  updated(key: string): void {
    this._touch(key);
  }

  private _touch(key: string): void {
    if (key === this._viewed) {
      this._readSeq.set(key, this.transcript(key).lastSeq);
    }
    this._changed.emit(key);
  }
}
