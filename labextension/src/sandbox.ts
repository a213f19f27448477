/** What the manager's catalogue says about sandboxing, as the sidebar and the form show it. */

import { IAgentCreate, ICatalog, IRuntimeInfo } from './protocol';

export const UNSANDBOXED = 'Agents on this manager run without a sandbox (AGENSTRA_SANDBOX=none)';
export const NO_SANDBOX = 'Agents cannot run: no working sandbox on this host';
export const NETWORK_HINT =
  'egress: the internet only, never this host; list local ports (e.g. 11434 for Ollama) to allow them';

const SANDBOX_TEXT: Record<string, string> = {
  bwrap: 'sandboxed (bwrap)',
  none: 'NOT sandboxed',
  missing: 'no sandbox, cannot run',
  container: 'container'
};

/** A runtime option: its name and sandbox state ("process — sandboxed (bwrap)"). */
export function runtimeLabel(runtime: IRuntimeInfo): string {
  const state = runtime.sandbox ? SANDBOX_TEXT[runtime.sandbox] : undefined;
  const label = state ? `${runtime.name} — ${state}` : `${runtime.name}: ${runtime.description}`;
  return runtime.available || runtime.sandbox === 'missing' ? label : `${label} (unavailable)`;
}

export interface ISandboxWarning {
  level: 'warning' | 'error';
  text: string;
}

/**
 * The strip the sidebar shows for a manager: an error when the runtime its agent uses (the
 * default runtime when no agent is selected) has no working sandbox, a warning when the
 * operator turned the sandbox off; null when agents are sandboxed.
 */
export function sandboxWarning(catalog: ICatalog | null, runtime?: string): ISandboxWarning | null {
  if (!catalog) {
    return null;
  }
  const find = (name?: string) => catalog.runtimes.find(r => r.name === name);
  const used = find(runtime ?? catalog.runtimes.find(r => r.default)?.name);
  if (used?.sandbox === 'missing') {
    return { level: 'error', text: used.problem || NO_SANDBOX };
  }
  if ([used, find('process')].some(r => r?.sandbox === 'none')) {
    return { level: 'warning', text: UNSANDBOXED };
  }
  return null;
}

/** Comma-separated port numbers, or what is wrong with them. */
export function parsePorts(text: string): number[] | string {
  const parts = text.split(',').map(p => p.trim()).filter(Boolean);
  const ports = parts.map(Number);
  if (!parts.every(p => /^\d+$/.test(p)) || ports.some(p => p < 1 || p > 65535)) {
    return 'Loopback ports: comma-separated port numbers (1-65535)';
  }
  return [...new Set(ports)];
}

/**
 * The request with the form's network and loopback ports in its config; what the JSON
 * config field sets wins. An empty network leaves the manager's default (egress for agents
 * that call a model API, none otherwise).
 */
export function withNetwork(
  request: IAgentCreate,
  network: string,
  ports: string
): IAgentCreate | string {
  const loopbackPorts = parsePorts(ports);
  if (typeof loopbackPorts === 'string') {
    return loopbackPorts;
  }
  const extra: Record<string, unknown> = {};
  if (network) {
    extra.network = network;
  }
  if (loopbackPorts.length) {
    extra.loopbackPorts = loopbackPorts;
  }
  if (!Object.keys(extra).length) {
    return request;
  }
  return { ...request, config: { ...extra, ...request.config } };
}
