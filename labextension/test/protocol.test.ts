import { describe, expect, it } from 'vitest';

import { agentCreateRequest as toRequest } from '../src/protocol';

describe('the create-agent form', () => {
  it('builds the REST body from the fields', () => {
    expect(toRequest('helper', 'cli', 'docker', ' img:1 ', '{"preset": "claude"}')).toEqual({
      name: 'helper', provider: 'cli', runtime: 'docker', image: 'img:1',
      config: { preset: 'claude' }
    });
    expect(toRequest('helper', 'echo', 'process', 'ignored', '')).toEqual({
      name: 'helper', provider: 'echo', runtime: 'process'
    });
  });

  it('explains what is wrong instead of sending it', () => {
    expect(toRequest('-bad', 'echo', '', '', '')).toMatch(/^Name/);
    expect(toRequest('ok', '', '', '', '')).toBe('Choose a provider');
    expect(toRequest('ok', 'echo', '', '', '{nope')).toBe('Config must be JSON');
    expect(toRequest('ok', 'echo', '', '', '[1]')).toBe('Config must be a JSON object');
  });
});
