/** What permission cards say: who decided what, and how long a request still waits. */

import { IPermissionResolved } from './protocol';

/**
 * The names the controller may record for the user of this page (it prefers the display
 * name, a token login's "Anonymous Io"; older controllers sent the username).
 */
export function namesOf(
  identity: { username?: string; name?: string; display_name?: string } | null | undefined
): string[] {
  const names = [identity?.username, identity?.name, identity?.display_name];
  return names.filter((name): name is string => typeof name === 'string' && name !== '');
}

/**
 * One line for a settled request: "Allowed by alice", "Allowed by you" (`me`: the names
 * of this page's user), "Rejected — expired", …
 */
export function verdictText(resolved: IPermissionResolved, me: readonly string[] = []): string {
  const { outcome, by } = resolved;
  if (outcome === 'expired' || by === 'timeout') {
    return 'Rejected — expired';
  }
  if (outcome === 'cancelled') {
    return 'Cancelled — the turn stopped';
  }
  const verb = outcome === 'allowed' ? 'Allowed' : 'Rejected';
  if (by === 'policy') {
    return `${verb} by policy`;
  }
  if (!resolved.user) {
    return verb;
  }
  return `${verb} by ${me.includes(resolved.user) ? 'you' : resolved.user}`;
}

/** The collapsed card: "Allowed by policy: Read notebook.ipynb". */
export function resolutionText(
  resolved: IPermissionResolved,
  title?: string,
  me: readonly string[] = []
): string {
  const verdict = verdictText(resolved, me);
  return title ? `${verdict}: ${title}` : verdict;
}

/** "expires in 4 min 5 s (at 14:03)"; "expiring…" once the time is up. */
export function expiresText(expiresAt: string, now: number): string {
  const end = Date.parse(expiresAt);
  if (Number.isNaN(end)) {
    return '';
  }
  const at = new Date(end).toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    hourCycle: 'h23'
  });
  const seconds = Math.floor((end - now) / 1000);
  if (seconds <= 0) {
    return `expiring (was due at ${at})…`;
  }
  const left =
    seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `expires in ${left} (at ${at})`;
}

/** Buttons of allowing options look like accepting, rejecting ones like a warning. */
export function optionStyle(kind: string): 'accept' | 'reject' {
  return kind.startsWith('reject') ? 'reject' : 'accept';
}

const KIND_LABELS: Record<string, string> = {
  allow_once: 'Allow',
  allow_always: 'Always allow',
  reject_once: 'Reject',
  reject_always: 'Always reject'
};
/*
 * Whether an agent's name for an option agrees with what the option does. Word starts
 * (\b…) catch "Allowed", "Denied", "Refusing"; "n't" catches "Don't allow" and "Won't".
 * An allow name must say allowing and nothing of refusing; a reject name the reverse.
 * The same rule as agenstra_jupyter/render.py option_label (tests/fixtures/option_labels.json).
 */
const ALLOW_AGREES = /\b(allow|accept|approv|yes|ok\b|always|proceed|continue)/i;
const ALLOW_CONTRARY =
  /\b(reject|den(y|ied)|disallow|refus|declin|never|not\b|no\b|skip|abort|cancel|block|stop)|n't/i;
const REJECT_AGREES =
  /\b(reject|den(y|ied)|disallow|refus|declin|never|no\b|skip|abort|cancel|block|stop)|n't/i;
const REJECT_CONTRARY = /\b(allow|accept|approv|yes|ok\b|proceed|continue)/i;

function agrees(name: string, kind: string): boolean {
  return kind.startsWith('reject')
    ? REJECT_AGREES.test(name) && !REJECT_CONTRARY.test(name)
    : ALLOW_AGREES.test(name) && !ALLOW_CONTRARY.test(name);
}

/**
 * What an option's button says. The agent names its options, and an agent is untrusted:
 * its name is shown only when it agrees with the option's kind (see `agrees`); any other
 * name ("Reject" on allow_always, "Skip" on allow_once, "") gives the kind's own words.
 * The agent's name stays in the tooltip.
 */
export function optionLabel(option: { name?: string; kind: string }): string {
  const own = KIND_LABELS[option.kind] ?? option.kind;
  const name = (option.name ?? '').trim();
  return name && agrees(name, option.kind) ? name : own;
}

/** The tooltip: the option kind's own words, and the agent's name when it differs. */
export function optionTitle(option: { name?: string; kind: string }): string {
  const own = KIND_LABELS[option.kind] ?? option.kind;
  const name = (option.name ?? '').trim();
  return name && name.toLowerCase() !== own.toLowerCase()
    ? `${own} (the agent calls it "${name}")` : own;
}
