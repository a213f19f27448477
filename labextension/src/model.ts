/**
 * What the sidebar shows and does, apart from how it looks: managers and agents,
 * the selection, creating and deleting agents, sending and cancelling.
 */

import { UUID } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { ControllerApi } from './api';
import { ChatConnection } from './connection';
import { IAgent, IAgentCreate, ICatalog, IClient } from './protocol';
import { agentKey, ChatStore, Transcript } from './state';

export interface ISelection {
  clientId: string | null;
  agentId: string | null;
}

export class SidebarModel {
  constructor(
    readonly api: ControllerApi,
    readonly connection: ChatConnection
  ) {
    this.store.changed.connect(this._emit, this);
    connection.statusChanged.connect(() => {
      const { error } = connection.status;
      if (error && error !== this._reported) {
        this._reported = error; // shown once: a dismissed error does not come back
        this.notice = error.message;
      }
      this._emit();
      // Back online: whatever failed to open (the manager was away) is tried again.
      void this.openSelected();
    }, this);
  }

  clients: IClient[] = [];
  agents: IAgent[] = [];
  catalog: ICatalog | null = null;
  selection: ISelection = { clientId: null, agentId: null };
  /** The last failure, shown until dismissed. */
  notice: string | null = null;
  loading = false;

  get store(): ChatStore {
    return this.connection.store;
  }

  /** Emits on any change the panel shows. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emits the selection when the user changes it (to remember it). */
  get selected(): ISignal<this, ISelection> {
    return this._selected;
  }

  get selectedKey(): string | null {
    const { clientId, agentId } = this.selection;
    return clientId && agentId ? agentKey(clientId, agentId) : null;
  }

  get transcript(): Transcript | null {
    const key = this.selectedKey;
    return key ? this.store.transcript(key) : null;
  }

  get selectedAgent(): IAgent | undefined {
    return this.agents.find(a => a.id === this.selection.agentId);
  }

  /** Loads managers and agents, keeping `preferred` (the remembered agent) when it exists. */
  load(preferred?: ISelection): Promise<void> {
    this._started = true;
    // One load at a time: a refresh must not race the start-up load of the remembered agent.
    this._loading = this._loading.then(() =>
      this._guard(async () => {
        const wanted = preferred ?? this.selection;
        this.clients = await this.api.clients();
        const clientId =
          this.clients.find(c => c.id === wanted.clientId)?.id ?? this.clients[0]?.id ?? null;
        await this._useClient(clientId, wanted.agentId);
      }).then(() => undefined)
    );
    return this._loading;
  }

  async selectClient(clientId: string): Promise<void> {
    await this._guard(() => this._useClient(clientId, null));
    this._selected.emit(this.selection);
  }

  async selectAgent(agentId: string | null): Promise<void> {
    this.selection = { ...this.selection, agentId };
    this._selected.emit(this.selection);
    this._emit();
    await this.openSelected();
  }

  /** Reloads managers and agents, keeping the selection where it still exists. */
  refresh(): Promise<void> {
    // Before the first load (the panel restored open at start-up) there is nothing to refresh.
    return this._started ? this.load() : Promise.resolve();
  }

  async createAgent(request: IAgentCreate): Promise<boolean> {
    const clientId = this.selection.clientId;
    if (!clientId) {
      return false;
    }
    return this._guard(async () => {
      const agent = await this.api.createAgent(clientId, request);
      this.agents = await this.api.agents(clientId);
      await this.selectAgent(agent.id); // the new agent, selected, is the confirmation
    });
  }

  async deleteAgent(): Promise<boolean> {
    const { clientId, agentId } = this.selection;
    if (!clientId || !agentId) {
      return false;
    }
    return this._guard(async () => {
      await this.api.deleteAgent(clientId, agentId);
      await this.connection.close(clientId, agentId);
      this.agents = await this.api.agents(clientId);
      await this.selectAgent(this.agents[0]?.id ?? null);
    });
  }

  /**
   * Sends a message to the selected agent; false (with a notice) when it was not accepted.
   * Sending the same text again after a failure reuses its correlationId, so a message
   * that did reach the manager before the failure is not stored twice.
   */
  async send(text: string): Promise<boolean> {
    const { clientId, agentId } = this.selection;
    if (!clientId || !agentId || !text.trim()) {
      return false;
    }
    const key = this.selectedKey;
    const retry = this._failed?.key === key && this._failed.text === text;
    const correlationId = retry ? this._failed!.correlationId : UUID.uuid4();
    this._failed = { key, text, correlationId };
    const sent = await this._guard(() =>
      this.connection.chat(clientId, agentId, text, correlationId)
    );
    if (sent) {
      this._failed = null;
    }
    return sent;
  }

  async cancel(): Promise<void> {
    const { clientId, agentId } = this.selection;
    if (clientId && agentId) {
      await this._guard(() => this.connection.cancel(clientId, agentId));
    }
  }

  async openSelected(): Promise<void> {
    const { clientId, agentId } = this.selection;
    if (clientId && agentId && this.connection.status.socket === 'connected') {
      await this._guard(() => this.connection.open(clientId, agentId));
    }
  }

  dismissNotice(): void {
    this.notice = null;
    this._emit();
  }

  /** Shows a manager's agents; the view is cleared only when the manager changes. */
  private async _useClient(clientId: string | null, agentId: string | null): Promise<void> {
    if (clientId !== this.selection.clientId) {
      this.selection = { clientId, agentId: null };
      this.agents = [];
      this.catalog = null;
      this._emit();
    }
    if (!clientId) {
      return;
    }
    const [agents, catalog] = await Promise.all([
      this.api.agents(clientId),
      this.api.catalog(clientId)
    ]);
    this.agents = agents;
    this.catalog = catalog;
    const chosen = agents.find(a => a.id === agentId) ?? agents[0];
    this.selection = { clientId, agentId: chosen?.id ?? null };
    this._emit();
    await this.openSelected();
  }

  /** Runs a user action: shows progress, turns failures into a notice. */
  private async _guard(action: () => Promise<unknown>): Promise<boolean> {
    this.loading = true;
    this._emit();
    try {
      await action();
      return true;
    } catch (error: any) {
      this.notice = error?.message ?? String(error);
      return false;
    } finally {
      this.loading = false;
      this._emit();
    }
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _reported: unknown = null;
  private _started = false;
  private _loading: Promise<void> = Promise.resolve();
  private _failed: { key: string | null; text: string; correlationId: string } | null = null;
  private readonly _changed = new Signal<this, void>(this);
  private readonly _selected = new Signal<this, ISelection>(this);
}
