import { describe, expect, it } from 'vitest';

import {
  agentCreateRequest as toRequest,
  configPlaceholder,
  responseFormat
} from '../src/protocol';

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

describe('the config placeholder', () => {
  it("shows the provider's example, one key a line", () => {
    const openai = {
      name: 'openai', description: '', capabilities: [],
      example: { model: 'gpt-4o-mini', baseUrl: 'https://api.openai.com/v1', apiKeyEnv: 'OPENAI_API_KEY' }
    };
    expect(configPlaceholder(openai)).toBe(
      '{"model": "gpt-4o-mini",\n "baseUrl": "https://api.openai.com/v1",\n "apiKeyEnv": "OPENAI_API_KEY"}'
    );
    expect(JSON.parse(configPlaceholder(openai))).toEqual(openai.example);
    expect(configPlaceholder({ ...openai, example: { command: ['a', 'b'] } })).toBe(
      '{"command": ["a","b"]}'
    );
  });

  it('is an empty object for a provider without an example (an older manager)', () => {
    expect(configPlaceholder({ name: 'echo', description: '', capabilities: [] })).toBe('{}');
    expect(configPlaceholder(undefined)).toBe('{}');
  });
});

describe('the response format', () => {
  it('is text only when it says so, markdown otherwise', () => {
    expect(responseFormat({ format: 'text' })).toBe('text');
    expect(responseFormat({ format: 'markdown' })).toBe('markdown');
    expect(responseFormat({})).toBe('markdown');
    expect(responseFormat({ format: 'html' })).toBe('markdown');
    expect(responseFormat(undefined)).toBe('markdown');
  });
});
