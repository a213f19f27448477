/**
 * What the sidebar shows and does, apart from how it looks: managers and agents,
 * the selection, creating and deleting agents, sending and cancelling.
 */

import { UUID } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { ControllerApi } from './api';
import { ChatConnection, IConnectionStatus } from './connection';
import { IPlacement } from './hosts';
import {
  IAgent,
  IAgentCreate,
  ICatalog,
  IClient,
  REMOTE_UNAVAILABLE,
  UNKNOWN_REQUEST
} from './protocol';
import { IAttachment, withContext } from './selection';
import { agentKey, ChatStore, Transcript } from './state';

export interface ISelection {
  clientId: string | null;
  agentId: string | null;
}

/** The one state the status line shows: the worst that applies to the selected manager. */
export interface IStatusView {
  state: string;
  text: string;
}

const SOCKET_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  disconnected: 'Disconnected',
  refused: 'Not allowed to connect'
};

/** How long a manager that did not answer waits before it is asked again (ms). */
export const RETRY_MS = 5000;

/**
 * The browser's own socket first (while it is down nothing is known of any manager), then
 * the selected manager: its link from the controller down, or its REST answers 502.
 */
export function statusView(
  status: IConnectionStatus,
  clientId: string | null,
  unreachable: boolean
): IStatusView {
  if (status.socket !== 'connected') {
    const text =
      status.socket === 'reconnecting' && status.attempt
        ? `Reconnecting (attempt ${status.attempt})…`
        : SOCKET_TEXT[status.socket];
    return { state: status.socket, text };
  }
  const attempt = clientId !== null ? status.remotes.get(clientId) : undefined;
  if (attempt) {
    return { state: 'remote-down', text: `Manager unreachable, reconnecting (attempt ${attempt})…` };
  }
  if (attempt !== undefined || unreachable) {
    return { state: 'remote-down', text: 'Manager unreachable' };
  }
  return { state: 'connected', text: SOCKET_TEXT.connected };
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
        this._report(error);
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
  /** The first load has ended (well or not). */
  loaded = false;
  /** The file browser's folder (relative to the Jupyter root): the create form's project. */
  currentFolder: () => string = () => '';
  /** The notebook "Ask about selection" would read (its path), or null: no button. */
  activeNotebook: string | null = null;
  /** Attaches the active notebook's selection (the command; set by the plugin). */
  askAboutSelection: () => void = () => undefined;
  /** Cells attached to the next message ("2 cells from analysis.ipynb"), until it is sent. */
  attachment: IAttachment | null = null;

  attach(attachment: IAttachment | null): void {
    this.attachment = attachment;
    this._emit();
  }

  setActiveNotebook(path: string | null): void {
    if (path !== this.activeNotebook) {
      this.activeNotebook = path;
      this._emit();
    }
  }

  /** The project of an agent seen in a list (relative; null: none, undefined: not seen). */
  projectOf(key: string): string | null | undefined {
    return this._projects.get(key);
  }

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

  /** Whether the selected manager's REST answers said it cannot be reached. */
  get unreachable(): boolean {
    const { clientId } = this.selection;
    return clientId !== null && this._unreachable.has(clientId);
  }

  get status(): IStatusView {
    return statusView(this.connection.status, this.selection.clientId, this.unreachable);
  }

  /** What the panel says while no agent is selected, and why `+` is disabled if it is. */
  get emptyText(): string {
    if (this.unreachable) {
      return 'Manager unreachable: its agents show here once it answers again.';
    }
    if (this.loading || !this.loaded) {
      return 'Loading…';
    }
    if (!this.clients.length) {
      return 'No manager is registered with this server.';
    }
    if (!this.catalog) {
      return 'This manager could not be loaded: refresh to try again.';
    }
    return 'No agent yet: create one with +.';
  }

  /** Loads managers and agents, keeping `preferred` (the remembered agent) when it exists. */
  load(preferred?: ISelection): Promise<void> {
    this._started = true;
    // One load at a time: a refresh must not race the start-up load of the remembered agent.
    this._loading = this._loading.then(() =>
      this._guard(async () => {
        const picks = this._picks;
        const wanted = preferred ?? this.selection;
        this.clients = await this.api.clients();
        const clientId =
          this.clients.find(c => c.id === wanted.clientId)?.id ?? this.clients[0]?.id ?? null;
        await this._useClient(clientId, wanted.agentId, picks);
      }).then(() => {
        this.loaded = true;
        this._emit();
      })
    );
    return this._loading;
  }

  async selectClient(clientId: string): Promise<void> {
    this._picks++;
    await this._guard(() => this._useClient(clientId, null));
    this._selected.emit(this.selection);
  }

  async selectAgent(agentId: string | null): Promise<void> {
    this._picks++;
    this.selection = { ...this.selection, agentId };
    this._selected.emit(this.selection);
    this._emit();
    await this.openSelected();
  }

  /** Reloads the managers' list and health only (the create form's hosts). */
  async refreshHosts(): Promise<void> {
    try {
      this.clients = await this.api.clients();
      this._emit();
    } catch {
      // the list shown stays; a failure here is the next load's to report
    }
  }

  /** Reloads managers and agents, keeping the selection where it still exists. */
  refresh(): Promise<void> {
    // Before the first load (the panel restored open at start-up) there is nothing to refresh.
    return this._started ? this.load() : Promise.resolve();
  }

  /** Creates an agent and selects it; what went wrong (for the form to show), or null.
   * Without `placement` it goes to the selected manager; with one, where it says (another
   * manager, a label, or the controller's choice), and that manager is selected. */
  async createAgent(request: IAgentCreate, placement?: IPlacement): Promise<string | null> {
    const clientId = this.selection.clientId;
    if (!clientId && !placement) {
      return 'Choose a manager first';
    }
    let problem: string | null = null;
    await this._guard(
      async () => {
        if (placement && placement.clientId !== clientId) {
          const agent = await this.api.placeAgent(request, placement);
          const where = agent.clientId ?? placement.clientId ?? clientId;
          this._picks++;
          this.clients = await this.api.clients(); // its counts changed
          await this._useClient(where ?? null, agent.id);
          this._selected.emit(this.selection);
          return;
        }
        const agent = await this.api.createAgent(clientId!, request);
        this._setAgents(clientId!, await this.api.agents(clientId!));
        await this.selectAgent(agent.id); // the new agent, selected, is the confirmation
      },
      error => (problem = error?.message ?? String(error))
    );
    return problem;
  }

  async deleteAgent(): Promise<boolean> {
    const { clientId, agentId } = this.selection;
    if (!clientId || !agentId) {
      return false;
    }
    return this._guard(async () => {
      // Logged out while the agent exists: a logout after the delete would be refused, and
      // the refusal shown as a notice next to the successful delete.
      await this.connection.close(clientId, agentId);
      try {
        await this.api.deleteAgent(clientId, agentId);
      } catch (error) {
        await this.connection.open(clientId, agentId).catch(() => undefined); // still there
        throw error;
      }
      this._setAgents(clientId, await this.api.agents(clientId));
      await this.selectAgent(this.agents[0]?.id ?? null);
    });
  }

  /**
   * Sends a message to the selected agent; false (with a notice) when it was not accepted.
   * Sending the same text again after a failure reuses its correlationId, so a message
   * that did reach the manager before the failure is not stored twice. An attachment goes
   * in front of the text, and is dropped once the message was accepted.
   */
  async send(message: string): Promise<boolean> {
    const { clientId, agentId } = this.selection;
    if (!clientId || !agentId || !message.trim()) {
      return false;
    }
    const attached = this.attachment;
    const text = withContext(attached?.text ?? '', message);
    const key = this.selectedKey;
    const retry = this._failed?.key === key && this._failed.text === text;
    const correlationId = retry ? this._failed!.correlationId : UUID.uuid4();
    this._failed = { key, text, correlationId };
    const sent = await this._guard(() =>
      this.connection.chat(clientId, agentId, text, correlationId)
    );
    if (sent) {
      this._failed = null;
      if (this.attachment === attached) {
        this.attach(null); // not one attached while this message was on its way
      }
    }
    return sent;
  }

  /** Answers a permission request of the selected agent with one of its options. */
  async respond(requestId: string, optionId: string): Promise<void> {
    const { clientId, agentId } = this.selection;
    const key = this.selectedKey;
    if (!clientId || !agentId || !key) {
      return;
    }
    const transcript = this.store.transcript(key);
    transcript.markSent(requestId, optionId);
    this.store.updated(key);
    try {
      await this.connection.respond(clientId, agentId, requestId, optionId);
    } catch (error: any) {
      if (error?.code === UNKNOWN_REQUEST) {
        transcript.markAnsweredElsewhere(requestId); // its resolution is on its way
      } else {
        transcript.markSent(requestId, undefined); // the buttons come back to try again
        this._report(error);
      }
      this.store.updated(key);
    }
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

  /**
   * Shows a manager's agents; the view is cleared only when the manager changes. A load
   * that the user's own choice overtook (`picks` counts them) applies nothing: the
   * refresh that started before the click must not take the click back.
   */
  private async _useClient(
    clientId: string | null,
    agentId: string | null,
    picks = this._picks
  ): Promise<void> {
    if (picks !== this._picks) {
      return;
    }
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
    if (picks !== this._picks) {
      return;
    }
    this._setAgents(clientId, agents);
    this.catalog = catalog;
    this._unreachable.delete(clientId);
    const chosen = agents.find(a => a.id === agentId) ?? agents[0];
    this.selection = { clientId, agentId: chosen?.id ?? null };
    this._emit();
    await this.openSelected();
  }

  /** Runs a user action: shows progress, turns failures into a notice (or `onError`). */
  private async _guard(
    action: () => Promise<unknown>,
    onError: (error: any) => void = error => this._report(error)
  ): Promise<boolean> {
    this.loading = true;
    this._emit();
    try {
      await action();
      return true;
    } catch (error: any) {
      onError(error);
      return false;
    } finally {
      this.loading = false;
      this._emit();
    }
  }

  /**
   * A failure becomes a notice, but an unreachable manager is a state: the status line
   * says it (once, not also a notice) until the manager answers again, asked every RETRY_MS.
   */
  private _report(error: any): void {
    const clientId = this.selection.clientId;
    if (error?.code === REMOTE_UNAVAILABLE && clientId) {
      this._unreachable.add(clientId);
      this._retryLater();
    } else {
      this.notice = error?.message ?? String(error);
    }
  }

  private _retryLater(): void {
    if (!this._retry) {
      this._retry = setTimeout(() => {
        this._retry = null;
        void this.refresh();
      }, RETRY_MS);
    }
  }

  /** The agents shown, and the project each works on (for filesChanged). */
  private _setAgents(clientId: string, agents: IAgent[]): void {
    this.agents = agents;
    agents.forEach(agent => this._projects.set(agentKey(clientId, agent.id), agent.project ?? null));
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _reported: unknown = null;
  private _picks = 0;
  private readonly _unreachable = new Set<string>();
  private readonly _projects = new Map<string, string | null>();
  private _retry: ReturnType<typeof setTimeout> | null = null;
  private _started = false;
  private _loading: Promise<void> = Promise.resolve();
  private _failed: { key: string | null; text: string; correlationId: string } | null = null;
  private readonly _changed = new Signal<this, void>(this);
  private readonly _selected = new Signal<this, ISelection>(this);
}
