/**
 * The panel's Socket.IO connection to the controller (namespace `/clients`).
 *
 * One socket serves every agent the panel has opened, on any manager. Operations run
 * one at a time because `setClient` switches the socket's manager context. After a
 * reconnect every opened agent is logged in again with `afterSeq`, so the transcript
 * receives exactly what it missed; the store drops anything it already holds.
 */

import { ISignal, Signal } from '@lumino/signaling';
import { UUID } from '@lumino/coreutils';

import {
  ControllerEvent,
  HISTORY_PAGE,
  IAck,
  IChatMessage,
  IErrorPayload,
  IForwardedEvent,
  IRemoteState,
  ManagerEvent
} from './protocol';
import { agentKey, ChatStore } from './state';

/** What the connection needs of a socket.io-client `Socket`. */
export interface ISocket {
  readonly connected: boolean;
  /** False once the server refused the connection: socket.io-client then stops retrying. */
  readonly active: boolean;
  on(event: string, listener: (...args: any[]) => void): unknown;
  timeout(ms: number): { emitWithAck(event: string, ...args: any[]): Promise<any> };
  readonly io: { on(event: string, listener: (...args: any[]) => void): unknown };
  connect(): unknown;
  disconnect(): unknown;
}

/** Reads stored history of an agent (REST), `after` a seq. */
export type HistoryReader = (
  clientId: string,
  agentId: string,
  after: number
) => Promise<IChatMessage[]>;

export type SocketState =
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  | 'disconnected'
  | 'refused';

export interface IConnectionStatus {
  socket: SocketState;
  attempt: number;
  /** Managers whose link from the controller is down, with the retry attempt. */
  remotes: Map<string, number>;
  /** The last error the controller reported (cleared by the next success). */
  error: IErrorPayload | null;
}

export class ChatError extends Error {
  constructor(
    message: string,
    readonly code: string
  ) {
    super(message);
  }
}

const ACK_TIMEOUT_MS = 30000;

export class ChatConnection {
  constructor(
    private readonly _socket: ISocket,
    readonly store: ChatStore,
    private readonly _history: HistoryReader
  ) {
    _socket.on('connect', () => this._onConnect());
    _socket.on('disconnect', (reason: string) => this._onDisconnect(reason));
    _socket.on('connect_error', (error: Error) => this._onConnectError(error));
    _socket.io.on('reconnect_attempt', (attempt: number) =>
      this._setStatus({ socket: 'reconnecting', attempt })
    );
    _socket.on(ControllerEvent.forwardedEvent, (data: IForwardedEvent) =>
      this._onForwarded(data)
    );
    _socket.on(ControllerEvent.error, (error: IErrorPayload) =>
      this._setStatus({ error })
    );
    _socket.on(ControllerEvent.remoteDisconnected, (s: IRemoteState) =>
      this._setRemote(s, 0)
    );
    _socket.on(ControllerEvent.remoteReconnecting, (s: IRemoteState) =>
      this._setRemote(s, s.attempt ?? 1)
    );
    _socket.on(ControllerEvent.remoteReconnected, (s: IRemoteState) =>
      this._setRemote(s, null)
    );
  }

  get status(): IConnectionStatus {
    return this._status;
  }

  get statusChanged(): ISignal<this, IConnectionStatus> {
    return this._statusChanged;
  }

  /** Loads an agent's history and subscribes to its traffic (once). */
  open(clientId: string, agentId: string): Promise<void> {
    const key = agentKey(clientId, agentId);
    let opening = this._opened.get(key);
    if (!opening) {
      opening = this._serial(async () => {
        await this._loadHistory(clientId, agentId);
        if (this._socket.connected) {
          await this._login(clientId, agentId);
        } // else the coming `connect` logs it in
      });
      this._opened.set(key, opening);
      opening.catch(() => this._opened.delete(key));
    }
    return opening;
  }

  /**
   * Sends a message; returns its correlationId. Throws ChatError when not accepted.
   * Sending again with the same correlationId is safe: the manager stores a turn once.
   */
  async chat(
    clientId: string,
    agentId: string,
    message: string,
    correlationId: string = UUID.uuid4()
  ): Promise<string> {
    const transcript = this.store.transcript(agentKey(clientId, agentId));
    transcript.addPending(correlationId, message);
    this.store.updated(agentKey(clientId, agentId));
    try {
      await this.open(clientId, agentId);
      await this._forward(clientId, agentId, ManagerEvent.chat, {
        message,
        correlationId,
        stream: true
      });
    } catch (error) {
      transcript.dropPending(correlationId);
      this.store.updated(agentKey(clientId, agentId));
      throw error;
    }
    return correlationId;
  }

  /** Stops the agent's running turn. */
  cancel(clientId: string, agentId: string): Promise<void> {
    return this._forward(clientId, agentId, ManagerEvent.cancel, {});
  }

  /**
   * Answers a permission request of the agent. Throws ChatError; code UNKNOWN_REQUEST when
   * the request is settled already (another frontend, the policy or the timeout was first).
   */
  respond(clientId: string, agentId: string, requestId: string, optionId: string): Promise<void> {
    return this._forward(clientId, agentId, ManagerEvent.permissionResponse, {
      requestId,
      optionId
    });
  }

  /** Unsubscribes from an agent (after it was deleted) and drops its transcript. */
  async close(clientId: string, agentId: string): Promise<void> {
    const key = agentKey(clientId, agentId);
    const opened = this._opened.delete(key);
    this.store.forget(key);
    if (opened && this._socket.connected) {
      await this._forward(clientId, agentId, ManagerEvent.logout, {}).catch(() => undefined);
    }
  }

  /** Tries again after the server refused the connection. */
  reconnect(): void {
    this._setStatus({ socket: 'connecting', error: null });
    this._socket.connect();
  }

  dispose(): void {
    this._socket.disconnect();
  }

  private async _loadHistory(clientId: string, agentId: string): Promise<void> {
    const key = agentKey(clientId, agentId);
    const history: IChatMessage[] = [];
    let after = this.store.transcript(key).lastSeq;
    for (;;) {
      const page = await this._history(clientId, agentId, after);
      history.push(...page);
      if (page.length < HISTORY_PAGE) {
        break;
      }
      after = page[page.length - 1].seq;
    }
    this.store.load(key, history);
  }

  private async _login(clientId: string, agentId: string): Promise<void> {
    const key = agentKey(clientId, agentId);
    if (this._loggedIn.has(key)) {
      return;
    }
    const afterSeq = this.store.transcript(agentKey(clientId, agentId)).lastSeq;
    await this._send(clientId, {
      event: ManagerEvent.login,
      agentId,
      payload: { afterSeq }
    });
    this._loggedIn.add(key);
  }

  private _forward(
    clientId: string,
    agentId: string,
    event: string,
    payload: Record<string, unknown>
  ): Promise<void> {
    return this._serial(() => this._send(clientId, { event, agentId, payload }));
  }

  /** Emits one `forward` in the right manager context; runs inside `_serial`. */
  private async _send(clientId: string, forward: Record<string, unknown>): Promise<void> {
    if (!this._socket.connected) {
      throw new ChatError('Not connected to the server; try again when it is back', 'OFFLINE');
    }
    if (this._client !== clientId) {
      await this._emit(ControllerEvent.setClient, { clientId });
      this._client = clientId;
    }
    await this._emit(ControllerEvent.forward, forward);
  }

  private async _emit(event: string, payload: unknown): Promise<void> {
    let ack: IAck;
    try {
      ack = await this._socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
    } catch {
      throw new ChatError('The server did not answer in time', 'TIMEOUT');
    }
    if (!ack?.ok) {
      const error = ack?.error ?? { code: 'INTERNAL', message: 'Refused' };
      throw new ChatError(error.message, error.code);
    }
  }

  /** Runs operations one after another, whatever their outcome. */
  private _serial<T>(operation: () => Promise<T>): Promise<T> {
    const result = this._queue.then(operation);
    this._queue = result.then(
      () => undefined,
      () => undefined
    );
    return result;
  }

  private _onConnect(): void {
    this._client = null; // a new socket has no manager context and no logins yet
    this._loggedIn.clear();
    this._setStatus({ socket: 'connected', attempt: 0, error: null });
    for (const key of this._opened.keys()) {
      const [clientId, agentId] = splitKey(key);
      this._serial(() => this._login(clientId, agentId)).catch(error =>
        this._setStatus({ error: { code: error.code ?? 'INTERNAL', message: error.message } })
      );
    }
  }

  private _onDisconnect(reason: string): void {
    this._loggedIn.clear();
    if (reason === 'io client disconnect') {
      this._setStatus({ socket: 'disconnected', attempt: 0 });
      return;
    }
    if (reason === 'io server disconnect') {
      this._socket.connect(); // socket.io-client does not retry this one by itself
    }
    this._setStatus({ socket: 'reconnecting', attempt: 0 });
  }

  private _onConnectError(error: Error): void {
    // socket.io-client retries transport errors; a refusal by the server it does not.
    if (this._socket.active) {
      this._setStatus({ socket: 'reconnecting' });
    } else {
      const refusal = { code: 'UNAUTHORIZED', message: error.message };
      this._setStatus({ socket: 'refused', error: refusal });
    }
  }

  private _onForwarded(data: IForwardedEvent): void {
    if (!data || typeof data.clientId !== 'string' || typeof data.agentId !== 'string') {
      return;
    }
    const key = agentKey(data.clientId, data.agentId);
    if (!this._opened.has(key)) {
      return; // a late event of an agent this panel closed
    }
    if (data.event === ManagerEvent.error || data.event === ManagerEvent.loginError) {
      this._setStatus({ error: data.payload });
      return;
    }
    this.store.receive(key, data.event, data.payload);
  }

  private _setRemote(state: IRemoteState, attempt: number | null): void {
    const remotes = new Map(this._status.remotes);
    if (attempt === null) {
      remotes.delete(state.clientId);
    } else {
      remotes.set(state.clientId, attempt);
    }
    this._setStatus({ remotes });
  }

  private _setStatus(change: Partial<IConnectionStatus>): void {
    this._status = { ...this._status, ...change };
    this._statusChanged.emit(this._status);
  }

  private _status: IConnectionStatus = {
    socket: 'connecting',
    attempt: 0,
    remotes: new Map(),
    error: null
  };
  private readonly _statusChanged = new Signal<this, IConnectionStatus>(this);
  private readonly _opened = new Map<string, Promise<void>>();
  private _queue: Promise<void> = Promise.resolve();
  private readonly _loggedIn = new Set<string>();
  private _client: string | null = null;
}

function splitKey(key: string): [string, string] {
  const slash = key.indexOf('/');
  return [key.slice(0, slash), key.slice(slash + 1)];
}
