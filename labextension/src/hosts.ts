/**
 * Many managers ("hosts"): their health as the controller lists it, and the create form's
 * choice of where a new agent goes (docs/many-hosts.md).
 */

import { IClient } from './protocol';

/** The create form's host choice that lets the controller's placement policy decide. */
export const AUTOMATIC = '';
const LABEL_PREFIX = 'label:';

/** Where to create: the chosen manager, a label, or neither (automatic placement). */
export interface IPlacement {
  clientId?: string;
  label?: string;
}

export interface IHostOption {
  value: string;
  label: string;
  disabled?: boolean;
}

/** One line on a manager's state: "up, 3 of 10 agents", "down: Manager unreachable". */
export function hostState(client: IClient): string {
  const health = client.health;
  if (!health) {
    return 'state unknown';
  }
  if (health.state !== 'up') {
    return `down${health.error ? `: ${health.error}` : ''}`;
  }
  const agents = health.agents ?? 0;
  return health.capacity != null
    ? `up, ${agents} of ${health.capacity} agents${isFull(client) ? ' (full)' : ''}`
    : `up, ${agents} ${agents === 1 ? 'agent' : 'agents'}`;
}

export function isFull(client: IClient): boolean {
  const health = client.health;
  return !!health && health.capacity != null && (health.agents ?? 0) >= health.capacity;
}

/** Takes a new agent: up (or not checked) and not full. */
export function canTake(client: IClient): boolean {
  return (!client.health || client.health.state === 'up') && !isFull(client);
}

/** The form's options: automatic, automatic among a label's managers, then each manager
 * with its state (a down or full one shown, but not offered). */
export function hostOptions(clients: IClient[]): IHostOption[] {
  const labels = [...new Set(clients.flatMap(c => c.labels ?? []))].sort();
  return [
    { value: AUTOMATIC, label: 'automatic (the least busy host)' },
    ...labels.map(label => ({
      value: LABEL_PREFIX + label,
      label: `automatic, label "${label}"`,
      disabled: !clients.some(c => (c.labels ?? []).includes(label) && canTake(c))
    })),
    ...clients.map(c => ({
      value: c.id,
      label: `${c.name} (${hostState(c)})`,
      disabled: !canTake(c)
    }))
  ];
}

/** What the form's host value asks the controller for. */
export function placementOf(value: string): IPlacement {
  if (value === AUTOMATIC) {
    return {};
  }
  if (value.startsWith(LABEL_PREFIX)) {
    return { label: value.slice(LABEL_PREFIX.length) };
  }
  return { clientId: value };
}
