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

import { CurrentUser, DiffDetails, PermissionCardView, PermissionLine } from './approvalcard';
import { CodeText, CreateAgentForm } from './createagent';
import { Follower } from './follow';
import { ICodeActions, Markdown } from './markdown';
import { IChatMessage, IFileDiff, ResponseFormat, responseFormat } from './protocol';
import { IStatusView, SidebarModel } from './model';
import { sandboxWarning } from './sandbox';
import { splitContext } from './selection';
import {
  agentKey,
  diffPartsOf,
  ILiveTurn,
  IToolActivity,
  permissionPartsOf,
  runningText,
  toolsOf,
  Transcript
} from './state';

/** Answers a permission request of the shown agent. */
type Respond = (requestId: string, optionId: string) => void;

export class ChatPanel extends ReactWidget {
  /** The names of this page's user (a card they answered says "Allowed by you"). */
  currentUser: readonly string[] = [];

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
        {() => (
          <CurrentUser.Provider value={this.currentUser}>
            <Sidebar model={this.model} rendermime={this._rendermime} actions={this._actions} />
          </CurrentUser.Provider>
        )}
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
        <StatusLine status={model.status} refused={model.connection.status.socket === 'refused'}
          onRetry={() => model.connection.reconnect()} />
        <AgentActions model={model} onCreate={() => {
          if (!creating) {
            void model.refreshHosts(); // the form shows each host's state: a fresh one
          }
          setCreating(!creating);
        }} />
      </div>
      <Pickers model={model} />
      <SandboxStrip model={model} />
      {creating && model.catalog && (
        <CreateAgentForm catalog={model.catalog} folder={model.currentFolder()}
          clients={model.clients} clientId={model.selection.clientId}
          onCancel={() => setCreating(false)}
          onCreate={async (request, placement) => {
            const problem = await model.createAgent(request, placement);
            if (!problem) {
              setCreating(false);
            }
            return problem;
          }} />
      )}
      {model.notice && (
        <div className="jp-AgenstraChat-notice" role="alert">
          <span>{model.notice}</span>
          <Button minimal small onClick={() => model.dismissNotice()} aria-label="Dismiss">×</Button>
        </div>
      )}
      {transcript ? (
        <TranscriptView key={model.selectedKey} transcript={transcript} rendermime={rendermime}
          actions={actions} respond={(id, option) => void model.respond(id, option)} />
      ) : (
        <div className="jp-AgenstraChat-empty">{model.emptyText}</div>
      )}
      <Composer model={model} busy={!!transcript?.busy} />
    </>
  );
}

function StatusLine(props: {
  status: IStatusView;
  refused: boolean;
  onRetry: () => void;
}): JSX.Element {
  const { state, text } = props.status;
  return (
    <div className={`jp-AgenstraChat-status jp-mod-${state}`} data-state={state}>
      <span className="jp-AgenstraChat-statusDot" />
      <span className="jp-AgenstraChat-statusText">{text}</span>
      {props.refused && <Button small onClick={props.onRetry}>Retry</Button>}
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
    const name = agent.project ? `${agent.name} — ${agent.project}` : agent.name;
    return { value: agent.id, label: unread ? `${name} (${unread})` : name };
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
  respond: Respond;
}): JSX.Element {
  const { transcript, rendermime, actions, respond } = props;
  const scroller = React.useRef<HTMLDivElement>(null);
  const content = React.useRef<HTMLDivElement>(null);
  const follower = React.useRef<Follower | null>(null);
  const [following, setFollowing] = React.useState(true);
  // Any change of size (a message, a delta, markdown rendered late, a resized panel)
  // keeps the view at the bottom while it follows.
  React.useLayoutEffect(() => {
    const follow = (follower.current = new Follower(scroller.current!, setFollowing));
    follow.jump();
    const observer = new ResizeObserver(() => follow.resized());
    observer.observe(scroller.current!);
    observer.observe(content.current!);
    return () => observer.disconnect();
  }, []);
  // What the user sends brings the view down to it.
  const sending = transcript.pending.size;
  React.useLayoutEffect(() => {
    if (sending) {
      follower.current?.jump();
    }
  }, [sending]);
  return (
    <div className="jp-AgenstraChat-transcriptBox">
      <div className="jp-AgenstraChat-transcript" ref={scroller}
        onScroll={() => follower.current?.scrolled()} role="log" aria-live="polite">
        <div ref={content}>
          <Messages transcript={transcript} rendermime={rendermime} actions={actions}
            respond={respond} />
        </div>
      </div>
      {!following && (
        <Button small className="jp-AgenstraChat-jump" onClick={() => follower.current?.jump()}>
          Jump to latest ↓
        </Button>
      )}
    </div>
  );
}

function Messages(props: {
  transcript: Transcript;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
  respond: Respond;
}): JSX.Element {
  const { transcript, rendermime, actions, respond } = props;
  return (
    <>
      {transcript.messages.map(message => (
        <MessageView key={message.id} message={message} rendermime={rendermime}
          actions={actions} />
      ))}
      {[...transcript.pending.values()].map(p => (
        <div key={p.correlationId} className="jp-AgenstraChat-message jp-mod-user jp-mod-pending">
          <UserText text={p.text} />
        </div>
      ))}
      {[...transcript.live.values()].map(turn => (
        <LiveTurnView key={turn.correlationId} turn={turn} rendermime={rendermime}
          actions={actions} transcript={transcript} respond={respond} />
      ))}
      {transcript.busy && transcript.live.size === 0 && (
        <div className="jp-AgenstraChat-working">Waiting for the agent…</div>
      )}
    </>
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
    return (
      <div className="jp-AgenstraChat-message jp-mod-user" {...attrs}>
        <UserText text={message.text ?? ''} />
      </div>
    );
  }
  const response = message.response ?? { type: 'error', result: '' };
  if (response.type === 'error') {
    return (
      <div className="jp-AgenstraChat-message jp-mod-agent jp-mod-error" {...attrs}>
        {response.result}
      </div>
    );
  }
  const parts = response.parts ?? [];
  return (
    <div className="jp-AgenstraChat-message jp-mod-agent" {...attrs}>
      {permissionPartsOf(parts).map(card => <PermissionLine key={card.requestId} card={card} />)}
      <ToolList tools={toolsOf(parts)} />
      <FileDiffs diffs={diffPartsOf(parts)} />
      <Result text={response.result} format={responseFormat(response)}
        rendermime={props.rendermime} actions={props.actions} />
    </div>
  );
}

/** What the user sent: the context it was sent with folded under its first line, as the
 * kernel's ChatWidget shows it (widgets.context_html), then the text itself. */
function UserText({ text }: { text: string }): JSX.Element {
  const [context, message] = splitContext(text);
  if (!context) {
    return <>{text}</>;
  }
  return (
    <>
      <details className="jp-AgenstraChat-context">
        <summary>{context.split('\n', 1)[0].replace(/:$/, '')}</summary>
        <pre>{context}</pre>
      </details>
      {message}
    </>
  );
}

/** An answer's text: command output as it was printed, anything else as markdown. */
function Result(props: {
  text: string;
  format: ResponseFormat;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}): JSX.Element {
  if (props.format === 'text') {
    return <pre className="jp-AgenstraChat-output">{props.text}</pre>;
  }
  return <Markdown text={props.text} rendermime={props.rendermime} actions={props.actions} />;
}

function LiveTurnView(props: {
  turn: ILiveTurn;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
  transcript: Transcript;
  respond: Respond;
}): JSX.Element {
  const { turn } = props;
  const now = useNow(1000);
  return (
    <div className="jp-AgenstraChat-message jp-mod-agent jp-mod-live">
      <ToolList tools={turn.tools} />
      {props.transcript.cardsOf(turn.correlationId).map(card => (
        <PermissionCardView key={card.requestId} card={card} onRespond={props.respond} />
      ))}
      {turn.text && (
        <Result text={turn.text} format={turn.format} rendermime={props.rendermime}
          actions={props.actions} />
      )}
      <div className="jp-AgenstraChat-running">{runningText(turn.status, now - turn.startedAt)}</div>
    </div>
  );
}

/** The time, renewed every `ms` while the component is shown. */
function useNow(ms: number): number {
  const [now, setNow] = React.useState(Date.now);
  React.useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}

/** Tool calls, collapsed: the name shows, arguments and result open on click. */
function ToolList({ tools }: { tools: IToolActivity[] }): JSX.Element | null {
  if (!tools.length) {
    return null;
  }
  return (
    <div className="jp-AgenstraChat-tools">
      {tools.map(tool => (
        <React.Fragment key={tool.id}>
          <details className={`jp-AgenstraChat-tool${tool.isError ? ' jp-mod-error' : ''}`}>
            <summary>
              {tool.name}
              <span className="jp-AgenstraChat-toolState">
                {tool.done ? (tool.isError ? 'failed' : 'done') : 'running'}
              </span>
            </summary>
            {tool.args !== undefined && <pre>{show(tool.args)}</pre>}
            {tool.result !== undefined && <pre>{show(tool.result)}</pre>}
          </details>
          {tool.diff && <FileDiffs diffs={tool.diff} />}
        </React.Fragment>
      ))}
    </div>
  );
}

/** Files an answer changed: one collapsed line each ("path +3 −1"), the lines on click. */
function FileDiffs({ diffs }: { diffs: IFileDiff[] }): JSX.Element | null {
  if (!diffs.length) {
    return null;
  }
  return (
    <div className="jp-AgenstraChat-fileDiffs">
      {diffs.map((diff, index) => <DiffDetails key={`${diff.path}-${index}`} diff={diff} />)}
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
      {model.attachment && (
        <div className="jp-AgenstraChat-attachment" title={model.attachment.path}>
          <span>{model.attachment.label}</span>
          <Button minimal small aria-label="Remove attached cells"
            onClick={() => model.attach(null)}>×</Button>
        </div>
      )}
      <textarea className="jp-AgenstraChat-input jp-mod-styled" value={text} rows={3}
        placeholder={ready ? 'Message the agent (Enter sends, Shift+Enter: new line)' : 'Select an agent'}
        disabled={!ready} aria-label="Message" onChange={e => setText(e.currentTarget.value)}
        onKeyDown={onKeyDown} />
      <div className="jp-AgenstraChat-composerButtons">
        {model.activeNotebook !== null && (
          <Button className="jp-AgenstraChat-askSelection" small minimal
            title={`Ask about the selected cells of ${model.activeNotebook}`}
            onClick={() => model.askAboutSelection()}>
            Ask about selection
          </Button>
        )}
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
