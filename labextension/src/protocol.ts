/**
 * The wire contract as the browser sees it (DESIGN.md, namespace `/clients`).
 *
 * The Python side keeps the same names in `agenstra_jupyter/protocol.py`; this is the
 * one place the extension spells them.
 */

export const CLIENTS_NAMESPACE = '/clients';
export const SOCKETIO_PATH = ['agenstra', 'socket.io'];
export const API_PATH = ['agenstra', 'api'];
/** The most messages one history request returns (the manager's page size). */
export const HISTORY_PAGE = 1000;

/** Events on the controller's `/clients` namespace. */
export const ControllerEvent = {
  setClient: 'setClient',
  clientSet: 'clientSet',
  forward: 'forward',
  forwardedEvent: 'forwardedEvent',
  error: 'error',
  remoteDisconnected: 'remoteDisconnected',
  remoteReconnecting: 'remoteReconnecting',
  remoteReconnected: 'remoteReconnected'
} as const;

/** Manager events, carried inside `forward` and `forwardedEvent`. */
export const ManagerEvent = {
  login: 'login',
  loginSuccess: 'loginSuccess',
  loginError: 'loginError',
  chat: 'chat',
  chatMessage: 'chatMessage',
  chatEvent: 'chatEvent',
  cancel: 'cancel',
  logout: 'logout',
  logoutSuccess: 'logoutSuccess',
  permissionResponse: 'permissionResponse',
  error: 'error'
} as const;

export const ChatEventKind = {
  assistantDelta: 'assistantDelta',
  toolCall: 'toolCall',
  toolResult: 'toolResult',
  status: 'status',
  permissionRequest: 'permissionRequest',
  permissionResolved: 'permissionResolved',
  filesChanged: 'filesChanged'
} as const;

/** The controller's code for a manager it cannot reach (ErrorCode in protocol.py). */
export const REMOTE_UNAVAILABLE = 'REMOTE_UNAVAILABLE';
/** A `permissionResponse` for a request that is settled (someone else answered) or unknown. */
export const UNKNOWN_REQUEST = 'UNKNOWN_REQUEST';

/** A file's before and after (an edit an agent asks for, or the manager saw it make). */
export interface IFileDiff {
  path: string;
  oldText: string;
  newText: string;
}

/** One answer a permission request offers (DESIGN.md "Approvals"). */
export interface IPermissionOption {
  optionId: string;
  name: string;
  /** allow_once, allow_always, reject_once, reject_always */
  kind: string;
}

/** `chatEvent` kind `permissionRequest`: the agent asks before it acts. */
export interface IPermissionRequest {
  requestId: string;
  toolCallId?: string;
  title: string;
  /** read, edit, delete, move, search, execute, fetch, other */
  kind: string;
  paths?: string[];
  diff?: IFileDiff[];
  options: IPermissionOption[];
  expiresAt: string;
}

export type PermissionOutcome = 'allowed' | 'rejected' | 'expired' | 'cancelled';

/** `chatEvent` kind `permissionResolved`: who settled a request, and how. */
export interface IPermissionResolved {
  requestId: string;
  optionId?: string;
  outcome: PermissionOutcome;
  by: 'user' | 'policy' | 'timeout';
  user?: string;
  /** Present when the policy settled a request nobody was asked (no request came before). */
  title?: string;
}

/** `chatEvent` kind `filesChanged`: paths relative to the agent's workspace (its project). */
export interface IFilesChanged {
  paths: string[];
}

export interface IErrorPayload {
  message: string;
  code: string;
}

export interface IAck {
  ok: boolean;
  error?: IErrorPayload;
}

/** A structured part of a stored agent answer (text, tool call, tool result). */
export interface IPart {
  kind: string;
  text?: string;
  toolCallId?: string;
  name?: string;
  args?: unknown;
  result?: unknown;
  status?: string;
  isError?: boolean;
  /** toolCall parts: the edits the call makes. */
  diff?: IFileDiff[];
  /** `diff` parts (the manager's before/after of a file). */
  path?: string;
  oldText?: string;
  newText?: string;
  /** `permission` parts: how a request of the turn was settled. */
  requestId?: string;
  title?: string;
  toolKind?: string;
  paths?: string[];
  outcome?: PermissionOutcome;
  by?: 'user' | 'policy' | 'timeout';
  optionId?: string;
  user?: string;
}

/**
 * How an answer's `result` is shown: `markdown` (agents' prose; the default when absent) or
 * `text` (command output: preformatted, never read as markdown). A turn's `status` events
 * may carry it too, so the live view matches (ResponseFormat in protocol.py).
 */
export type ResponseFormat = 'markdown' | 'text';

export function responseFormat(carrier?: { format?: unknown } | null): ResponseFormat {
  return carrier?.format === 'text' ? 'text' : 'markdown';
}

export interface IChatMessage {
  id: string;
  seq: number;
  agentId: string;
  from: 'user' | 'agent';
  timestamp: string;
  correlationId: string;
  text?: string;
  response?: { type: 'text' | 'error'; result: string; parts?: IPart[]; format?: ResponseFormat };
}

export interface IChatEvent {
  agentId: string;
  correlationId: string;
  kind: string;
  payload: Record<string, any>;
  sequence: number;
}

export interface IForwardedEvent {
  event: string;
  payload: any;
  clientId: string;
  agentId: string;
}

export interface IRemoteState {
  clientId: string;
  attempt?: number;
}

/** A manager as the controller's REST lists it. */
export interface IClient {
  id: string;
  name: string;
  endpoint?: string;
  local?: boolean;
  /** What users may place agents by (docs/many-hosts.md). */
  labels?: string[];
  /** Registered limit on its agents; null: none. */
  capacity?: number | null;
  health?: IClientHealth;
}

/** A manager's last health check, as the controller's `GET clients` shows it. */
export interface IClientHealth {
  state: 'up' | 'down';
  agents: number | null;
  /** The tighter of the registered and the advertised capacity; null: no limit. */
  capacity: number | null;
  /** Why it is down, in the controller's words. */
  error: string | null;
  checkedAt: string;
}

export interface IAgent {
  id: string;
  name: string;
  provider: string;
  runtime: string;
  state?: string;
  description?: string;
  credentials?: boolean;
  /** The folder it works in, relative to the Jupyter root; null: a private workspace. */
  project?: string | null;
  /** Where it is (`POST agents`, `GET agents`). */
  clientId?: string;
}

export interface IProviderInfo {
  name: string;
  description: string;
  capabilities: string[];
  /** A valid config to start from (the form's placeholder). */
  example?: Record<string, unknown>;
  /** interactive: the user is asked per request; policy: the agent cannot ask. */
  approvals?: 'interactive' | 'policy';
  /** One line on how this provider's approvals work. */
  approvalsNote?: string;
  /** The CLI provider's presets (chosen by `config.preset`), each with its approvals. */
  presets?: Array<{ name: string; approvals?: 'interactive' | 'policy'; approvalsNote?: string }>;
}

/** How the agent the form describes is asked before it acts: its provider's, or its preset's. */
export function approvalsOf(
  provider: IProviderInfo | undefined,
  config: string
): { approvals?: string; note?: string } {
  let preset: unknown;
  try {
    preset = JSON.parse(config || '{}')?.preset;
  } catch {
    preset = undefined; // the form says what is wrong with the JSON on Create
  }
  const chosen = provider?.presets?.find(p => p.name === preset);
  const source = chosen ?? provider;
  return { approvals: source?.approvals, note: source?.approvalsNote };
}

/** The config field's placeholder: the provider's example, one key a line, or `{}`. */
export function configPlaceholder(provider?: IProviderInfo): string {
  const keys = Object.entries(provider?.example ?? {}).map(
    ([key, value]) => `${JSON.stringify(key)}: ${JSON.stringify(value)}`
  );
  return `{${keys.join(',\n ')}}`;
}

export interface IRuntimeInfo {
  name: string;
  description: string;
  available: boolean;
  default: boolean;
  /** bwrap: sandboxed; none: the operator opted out; missing: agents cannot run. */
  sandbox?: 'bwrap' | 'none' | 'missing' | 'container';
  /** How an agent with network 'egress' reaches out (missing: it cannot run). */
  network?: string;
  /** Why agents cannot run here, and what to install. */
  problem?: string;
}

export interface ICatalog {
  providers: IProviderInfo[];
  runtimes: IRuntimeInfo[];
}

export interface IAgentCreate {
  name: string;
  provider: string;
  runtime?: string;
  image?: string;
  config?: Record<string, unknown>;
  /** A folder relative to the Jupyter root: the agent works on the user's files there. */
  project?: string;
}

/** Agent config `permissions` (PERMISSION_POLICIES in protocol.py); `ask` is the default. */
export const PERMISSION_POLICIES = ['ask', 'workspace', 'allow', 'deny'] as const;
export const DEFAULT_PERMISSION_POLICY = 'ask';

/** Agent names the manager accepts (AGENT_NAME_PATTERN in protocol.py). */
const AGENT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The request the form describes, or what is wrong with it. */
export function agentCreateRequest(
  name: string,
  provider: string,
  runtime: string,
  image: string,
  config: string,
  extra: { project?: string; permissions?: string } = {}
): IAgentCreate | string {
  if (!AGENT_NAME_PATTERN.test(name)) {
    return 'Name: letters, digits, ".", "_" or "-", starting with a letter or digit (64 at most)';
  }
  if (!provider) {
    return 'Choose a provider';
  }
  const request: IAgentCreate = { name, provider };
  if (runtime) {
    request.runtime = runtime;
  }
  if (runtime === 'docker' && image.trim()) {
    request.image = image.trim();
  }
  if (config.trim()) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(config);
    } catch {
      return 'Config must be JSON';
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
      return 'Config must be a JSON object';
    }
    request.config = parsed as Record<string, unknown>;
  }
  const permissions = extra.permissions ?? DEFAULT_PERMISSION_POLICY;
  if (permissions !== DEFAULT_PERMISSION_POLICY && request.config?.permissions === undefined) {
    // Only a choice is sent: providers without approvals keep a config they accept.
    request.config = { ...request.config, permissions };
  }
  const project = normalProject(extra.project ?? '');
  if (project) {
    request.project = project;
  }
  return request;
}

/** A folder as the controller takes it: no leading `./`, no trailing `/` ("." is the root). */
export function normalProject(folder: string): string {
  return folder
    .trim()
    .replace(/^(\.\/)+/, '')
    .replace(/\/+$/, '')
    .replace(/^\.$/, '');
}
