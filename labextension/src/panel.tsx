/** The sidebar: pickers, transcript, composer. Its state lives in SidebarModel. */

import { Dialog, showDialog } from '@jupyterlab/apputils';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import {
  addIcon,
  Button,
  deleteIcon,
  HTMLSelect,
  ReactWidget,
  refreshIcon,
  ToolbarButtonComponent,
  UseSignal
} from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { IConnectionStatus } from './connection';
import { CodeText, CreateAgentForm } from './createagent';
import { ICodeActions, Markdown } from './markdown';
import { IChatMessage } from './protocol';
import { SidebarModel } from './model';
import { sandboxWarning } from './sandbox';
import { agentKey, ILiveTurn, IToolActivity, toolsOf, Transcript } from './state';

export class ChatPanel extends ReactWidget {
  constructor(
    readonly model: SidebarModel,
    private readonly _rendermime: IRenderMimeRegistry,
    private readonly _actions: ICodeActions
  ) {
    super();
    this.addClass('jp-AgenstraChat');
    model.changed.connect(this._updateViewed, this);
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <Sidebar model={this.model} rendermime={this._rendermime} actions={this._actions} />}
      </UseSignal>
    );
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._updateViewed();
    void this.model.refresh(); // managers or agents may have come or gone
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._updateViewed();
  }

  /** What the user sees counts as read; the tab shows how much is not. */
  private _updateViewed(): void {
    const store = this.model.store;
    const viewed = this.isVisible ? this.model.selectedKey : null;
    store.setViewed(viewed);
    const unread = store.totalUnread();
    this.title.caption = unread ? `Agent Chat (${unread} unread)` : 'Agent Chat';
    const { unread: _, ...dataset } = this.title.dataset; // JupyterLab keeps its own keys here
    this.title.dataset = unread ? { ...dataset, unread: String(unread) } : dataset;
    this.title.className = unread ? 'jp-AgenstraChat-unread' : '';
  }
}

interface ISidebarProps {
  model: SidebarModel;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}

function Sidebar({ model, rendermime, actions }: ISidebarProps): JSX.Element {
  const [creating, setCreating] = React.useState(false);
  const transcript = model.transcript;
  return (
    <>
      <div className="jp-AgenstraChat-header">
        <StatusLine status={model.connection.status} clientId={model.selection.clientId}
          onRetry={() => model.connection.reconnect()} />
        <AgentActions model={model} onCreate={() => setCreating(!creating)} />
      </div>
      <Pickers model={model} />
      <SandboxStrip model={model} />
      {creating && model.catalog && (
        <CreateAgentForm catalog={model.catalog} onCancel={() => setCreating(false)}
          onCreate={async request => {
            if (await model.createAgent(request)) {
              setCreating(false);
            }
          }} />
      )}
      {model.notice && (
        <div className="jp-AgenstraChat-notice" role="alert">
          <span>{model.notice}</span>
          <Button minimal small onClick={() => model.dismissNotice()} aria-label="Dismiss">×</Button>
        </div>
      )}
      {transcript ? (
        <TranscriptView transcript={transcript} rendermime={rendermime} actions={actions} />
      ) : (
        <div className="jp-AgenstraChat-empty">
          {model.loading ? 'Loading…' : 'No agent yet: create one with +.'}
        </div>
      )}
      <Composer model={model} busy={!!transcript?.busy} />
    </>
  );
}

const SOCKET_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  disconnected: 'Disconnected',
  refused: 'Not allowed to connect'
};

function StatusLine(props: {
  status: IConnectionStatus;
  clientId: string | null;
  onRetry: () => void;
}): JSX.Element {
  const { status, clientId } = props;
  let state: string = status.socket;
  let text = SOCKET_TEXT[status.socket];
  if (status.socket === 'reconnecting' && status.attempt) {
    text = `Reconnecting (attempt ${status.attempt})…`;
  }
  const remoteAttempt = clientId !== null ? status.remotes.get(clientId) : undefined;
  if (status.socket === 'connected' && remoteAttempt !== undefined) {
    state = 'remote-down';
    text = remoteAttempt
      ? `Manager unreachable, reconnecting (attempt ${remoteAttempt})…`
      : 'Manager unreachable';
  }
  return (
    <div className={`jp-AgenstraChat-status jp-mod-${state}`} data-state={state}>
      <span className="jp-AgenstraChat-statusDot" />
      <span className="jp-AgenstraChat-statusText">{text}</span>
      {status.socket === 'refused' && (
        <Button small onClick={props.onRetry}>Retry</Button>
      )}
    </div>
  );
}

function AgentActions({ model, onCreate }: { model: SidebarModel; onCreate: () => void }): JSX.Element {
  const confirmDelete = async () => {
    const agent = model.selectedAgent;
    if (!agent) {
      return;
    }
    const result = await showDialog({
      title: 'Delete agent',
      body: `Delete ${agent.name} and its chat history?`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (result.button.accept) {
      await model.deleteAgent();
    }
  };
  return (
    <div className="jp-AgenstraChat-actions">
      <ToolbarButtonComponent icon={addIcon} tooltip="New agent" onClick={onCreate}
        enabled={!!model.catalog} />
      <ToolbarButtonComponent icon={deleteIcon} tooltip="Delete agent"
        onClick={() => void confirmDelete()} enabled={!!model.selection.agentId} />
      <ToolbarButtonComponent icon={refreshIcon} tooltip="Refresh managers and agents"
        onClick={() => void model.refresh()} />
    </div>
  );
}

function Pickers({ model }: { model: SidebarModel }): JSX.Element {
  const { clientId, agentId } = model.selection;
  const store = model.store;
  const agentOptions = model.agents.map(agent => {
    const unread = clientId ? store.unread(agentKey(clientId, agent.id)) : 0;
    return { value: agent.id, label: unread ? `${agent.name} (${unread})` : agent.name };
  });
  return (
    <div className="jp-AgenstraChat-pickers">
      <HTMLSelect className="jp-AgenstraChat-client" aria-label="Manager"
        title="Manager" value={clientId ?? ''}
        options={model.clients.map(c => ({ value: c.id, label: c.name }))}
        onChange={e => void model.selectClient(e.currentTarget.value)} />
      <HTMLSelect className="jp-AgenstraChat-agent" aria-label="Agent" title="Agent"
        value={agentId ?? ''} options={agentOptions} disabled={!agentOptions.length}
        onChange={e => void model.selectAgent(e.currentTarget.value)} />
    </div>
  );
}

/** Whether this manager's agents are sandboxed, while they are not: it stays shown. */
function SandboxStrip({ model }: { model: SidebarModel }): JSX.Element | null {
  const warning = sandboxWarning(model.catalog, model.selectedAgent?.runtime);
  if (!warning) {
    return null;
  }
  return (
    <div className={`jp-AgenstraChat-sandbox jp-mod-${warning.level}`} data-level={warning.level}
      role={warning.level === 'error' ? 'alert' : 'status'}>
      <CodeText text={warning.text} />
    </div>
  );
}

function TranscriptView(props: {
  transcript: Transcript;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}): JSX.Element {
  const { transcript, rendermime, actions } = props;
  const scroller = React.useRef<HTMLDivElement>(null);
  const pinned = React.useRef(true);
  React.useLayoutEffect(() => {
    const node = scroller.current;
    if (node && pinned.current) {
      node.scrollTop = node.scrollHeight;
    }
  });
  const onScroll = () => {
    const node = scroller.current;
    if (node) {
      pinned.current = node.scrollHeight - node.scrollTop - node.clientHeight < 40;
    }
  };
  return (
    <div className="jp-AgenstraChat-transcript" ref={scroller} onScroll={onScroll}
      role="log" aria-live="polite">
      {transcript.messages.map(message => (
        <MessageView key={message.id} message={message} rendermime={rendermime}
          actions={actions} />
      ))}
      {[...transcript.pending.values()].map(p => (
        <div key={p.correlationId} className="jp-AgenstraChat-message jp-mod-user jp-mod-pending">
          {p.text}
        </div>
      ))}
      {[...transcript.live.values()].map(turn => (
        <LiveTurnView key={turn.correlationId} turn={turn} rendermime={rendermime}
          actions={actions} />
      ))}
      {transcript.busy && transcript.live.size === 0 && (
        <div className="jp-AgenstraChat-working">Waiting for the agent…</div>
      )}
    </div>
  );
}

function MessageView(props: {
  message: IChatMessage;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}): JSX.Element {
  const { message } = props;
  const attrs = { 'data-seq': message.seq, 'data-id': message.id };
  if (message.from === 'user') {
    return <div className="jp-AgenstraChat-message jp-mod-user" {...attrs}>{message.text}</div>;
  }
  const response = message.response ?? { type: 'error', result: '' };
  if (response.type === 'error') {
    return (
      <div className="jp-AgenstraChat-message jp-mod-agent jp-mod-error" {...attrs}>
        {response.result}
      </div>
    );
  }
  return (
    <div className="jp-AgenstraChat-message jp-mod-agent" {...attrs}>
      <ToolList tools={toolsOf(response.parts ?? [])} />
      <Markdown text={response.result} rendermime={props.rendermime} actions={props.actions} />
    </div>
  );
}

function LiveTurnView(props: {
  turn: ILiveTurn;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}): JSX.Element {
  const { turn } = props;
  return (
    <div className="jp-AgenstraChat-message jp-mod-agent jp-mod-live">
      <ToolList tools={turn.tools} />
      {turn.text ? (
        <Markdown text={turn.text} rendermime={props.rendermime} actions={props.actions} />
      ) : (
        <div className="jp-AgenstraChat-thinking">{turn.status ?? 'Thinking…'}</div>
      )}
    </div>
  );
}

/** Tool calls, collapsed: the name shows, arguments and result open on click. */
function ToolList({ tools }: { tools: IToolActivity[] }): JSX.Element | null {
  if (!tools.length) {
    return null;
  }
  return (
    <div className="jp-AgenstraChat-tools">
      {tools.map(tool => (
        <details key={tool.id} className={`jp-AgenstraChat-tool${tool.isError ? ' jp-mod-error' : ''}`}>
          <summary>
            {tool.name}
            <span className="jp-AgenstraChat-toolState">
              {tool.done ? (tool.isError ? 'failed' : 'done') : 'running'}
            </span>
          </summary>
          {tool.args !== undefined && <pre>{show(tool.args)}</pre>}
          {tool.result !== undefined && <pre>{show(tool.result)}</pre>}
        </details>
      ))}
    </div>
  );
}

function show(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value, null, 2);
}

function Composer({ model, busy }: { model: SidebarModel; busy: boolean }): JSX.Element {
  const [text, setText] = React.useState('');
  const ready = !!model.selection.agentId;
  const send = async () => {
    const message = text;
    if (!message.trim()) {
      return;
    }
    setText('');
    if (!(await model.send(message))) {
      setText(current => current || message); // not accepted: nothing is lost
    }
  };
  const onKeyDown = (event: React.KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      void send();
    }
  };
  return (
    <div className="jp-AgenstraChat-composer">
      <textarea className="jp-AgenstraChat-input jp-mod-styled" value={text} rows={3}
        placeholder={ready ? 'Message the agent (Enter sends, Shift+Enter: new line)' : 'Select an agent'}
        disabled={!ready} aria-label="Message" onChange={e => setText(e.currentTarget.value)}
        onKeyDown={onKeyDown} />
      <div className="jp-AgenstraChat-composerButtons">
        {busy && (
          <Button className="jp-AgenstraChat-cancel" small onClick={() => void model.cancel()}>
            Cancel
          </Button>
        )}
        <Button className="jp-AgenstraChat-send" small disabled={!ready || !text.trim()}
          onClick={() => void send()}>
          Send
        </Button>
      </div>
    </div>
  );
}
