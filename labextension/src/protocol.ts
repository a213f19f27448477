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
  error: 'error'
} as const;

export const ChatEventKind = {
  assistantDelta: 'assistantDelta',
  toolCall: 'toolCall',
  toolResult: 'toolResult',
  status: 'status'
} as const;

/** The controller's code for a manager it cannot reach (ErrorCode in protocol.py). */
export const REMOTE_UNAVAILABLE = 'REMOTE_UNAVAILABLE';

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
}

export interface IAgent {
  id: string;
  name: string;
  provider: string;
  runtime: string;
  state?: string;
  description?: string;
  credentials?: boolean;
}

export interface IProviderInfo {
  name: string;
  description: string;
  capabilities: string[];
  /** A valid config to start from (the form's placeholder). */
  example?: Record<string, unknown>;
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
}

/** Agent names the manager accepts (AGENT_NAME_PATTERN in protocol.py). */
const AGENT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The request the form describes, or what is wrong with it. */
export function agentCreateRequest(
  name: string,
  provider: string,
  runtime: string,
  image: string,
  config: string
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
  return request;
}
