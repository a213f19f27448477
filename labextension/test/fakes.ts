/** A socket.io-client stand-in: records what the panel emits, lets a test play the server. */

import { ISocket } from '../src/connection';
import { IAck, IChatMessage } from '../src/protocol';

type Listener = (...args: any[]) => void;

export class FakeSocket implements ISocket {
  connected = false;
  active = true;
  readonly emitted: Array<{ event: string; payload: any }> = [];
  /** Answers an emit; by default every request is accepted. */
  answer: (event: string, payload: any) => IAck = () => ({ ok: true });
  private readonly _listeners = new Map<string, Listener[]>();
  private readonly _managerListeners = new Map<string, Listener[]>();

  readonly io = {
    on: (event: string, listener: Listener) => add(this._managerListeners, event, listener)
  };

  on(event: string, listener: Listener): this {
    add(this._listeners, event, listener);
    return this;
  }

  timeout(): { emitWithAck(event: string, payload: any): Promise<any> } {
    return {
      emitWithAck: async (event: string, payload: any) => {
        this.emitted.push({ event, payload });
        return this.answer(event, payload);
      }
    };
  }

  connect(): void {
    this.connected = true;
    this.fire('connect');
  }

  disconnect(): void {
    this.connected = false;
    this.fire('disconnect', 'io client disconnect');
  }

  /** The connection drops the way a server restart drops it. */
  drop(): void {
    this.connected = false;
    this.fire('disconnect', 'transport close');
  }

  fire(event: string, ...args: any[]): void {
    (this._listeners.get(event) ?? []).forEach(listener => listener(...args));
  }

  fireManager(event: string, ...args: any[]): void {
    (this._managerListeners.get(event) ?? []).forEach(listener => listener(...args));
  }

  /** What the panel sent since the last call, as `event` or `forward:<event>` strings. */
  take(): Array<{ event: string; payload: any }> {
    return this.emitted.splice(0);
  }
}

function add(map: Map<string, Listener[]>, event: string, listener: Listener): void {
  map.set(event, [...(map.get(event) ?? []), listener]);
}

let counter = 0;

export function userMessage(seq: number, text = `question ${seq}`, agentId = 'a1'): IChatMessage {
  return {
    id: `m${seq}-${++counter}`,
    seq,
    agentId,
    from: 'user',
    text,
    timestamp: new Date(0).toISOString(),
    correlationId: `c${seq}`
  };
}

export function agentMessage(
  seq: number,
  correlationId: string,
  result = `answer ${seq}`,
  agentId = 'a1'
): IChatMessage {
  return {
    id: `m${seq}-${++counter}`,
    seq,
    agentId,
    from: 'agent',
    response: { type: 'text', result },
    timestamp: new Date(0).toISOString(),
    correlationId
  };
}

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, 0));
}
