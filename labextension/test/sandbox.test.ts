import { describe, expect, it } from 'vitest';

import { ICatalog, IRuntimeInfo } from '../src/protocol';
import {
  NO_SANDBOX,
  parsePorts,
  runtimeLabel,
  sandboxWarning,
  UNSANDBOXED,
  withNetwork
} from '../src/sandbox';

const INSTALL = 'Agents cannot run: no working sandbox on this host (bubblewrap is not installed).';

function runtime(name: string, more: Partial<IRuntimeInfo> = {}): IRuntimeInfo {
  return { name, description: `${name} runtime`, available: true, default: false, ...more };
}

function catalog(...runtimes: IRuntimeInfo[]): ICatalog {
  return { providers: [], runtimes };
}

describe('runtime options', () => {
  it('show the sandbox state', () => {
    expect(runtimeLabel(runtime('process', { sandbox: 'bwrap' }))).toBe(
      'process — sandboxed (bwrap)');
    expect(runtimeLabel(runtime('process', { sandbox: 'none' }))).toBe('process — NOT sandboxed');
    expect(runtimeLabel(runtime('docker', { sandbox: 'container' }))).toBe('docker — container');
    expect(runtimeLabel(runtime('process', { sandbox: 'missing', available: false }))).toBe(
      'process — no sandbox, cannot run');
  });

  it('say when a runtime is unavailable, and fall back to the description', () => {
    expect(runtimeLabel(runtime('docker', { sandbox: 'container', available: false }))).toBe(
      'docker — container (unavailable)');
    expect(runtimeLabel(runtime('process'))).toBe('process: process runtime'); // older managers
  });
});

describe('the sandbox strip', () => {
  it('shows nothing while agents are sandboxed, or before the catalogue arrives', () => {
    expect(sandboxWarning(null)).toBeNull();
    const sandboxed = catalog(runtime('process', { sandbox: 'bwrap', default: true }),
      runtime('docker', { sandbox: 'container' }));
    expect(sandboxWarning(sandboxed)).toBeNull();
    expect(sandboxWarning(sandboxed, 'docker')).toBeNull();
    expect(sandboxWarning(catalog(runtime('process', { default: true })))).toBeNull();
  });

  it('warns when the operator turned the sandbox off, whichever agent is selected', () => {
    const off = catalog(runtime('process', { sandbox: 'none', default: true }),
      runtime('docker', { sandbox: 'container' }));
    const warning = { level: 'warning', text: UNSANDBOXED };
    expect(sandboxWarning(off)).toEqual(warning);
    expect(sandboxWarning(off, 'process')).toEqual(warning);
    expect(sandboxWarning(off, 'docker')).toEqual(warning);
  });

  it("shows the manager's problem when the agent's runtime has no sandbox", () => {
    const missing = catalog(
      runtime('process', { sandbox: 'missing', available: false, default: true, problem: INSTALL }),
      runtime('docker', { sandbox: 'container' }));
    expect(sandboxWarning(missing)).toEqual({ level: 'error', text: INSTALL });
    expect(sandboxWarning(missing, 'process')).toEqual({ level: 'error', text: INSTALL });
    expect(sandboxWarning(missing, 'docker')).toBeNull(); // a container agent still runs
    const unexplained = catalog(runtime('process', { sandbox: 'missing', default: true }));
    expect(sandboxWarning(unexplained)?.text).toBe(NO_SANDBOX);
  });
});

describe('network fields', () => {
  const request = { name: 'a', provider: 'cli', runtime: 'process' };

  it('parse loopback ports', () => {
    expect(parsePorts('')).toEqual([]);
    expect(parsePorts(' 11434, 8080 ,,11434')).toEqual([11434, 8080]);
    for (const bad of ['0', '65536', 'abc', '80 81', '1.5', '-3']) {
      expect(parsePorts(bad)).toMatch(/^Loopback ports/);
    }
  });

  it('go into the config, where the JSON field wins', () => {
    expect(withNetwork(request, '', '')).toEqual(request);
    expect(withNetwork(request, 'egress', '11434')).toEqual({
      ...request, config: { network: 'egress', loopbackPorts: [11434] }
    });
    expect(withNetwork({ ...request, config: { network: 'none', preset: 'x' } }, 'egress', '1'))
      .toEqual({ ...request, config: { network: 'none', loopbackPorts: [1], preset: 'x' } });
    expect(withNetwork({ ...request, config: { loopbackPorts: [2] } }, '', '1')).toEqual({
      ...request, config: { loopbackPorts: [2] }
    });
    expect(withNetwork(request, 'none', 'x')).toMatch(/^Loopback ports/);
  });
});
