/// <reference types="node" />
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { optionLabel, optionTitle } from '../src/approvals';

/** The cases the Python side (render.option_label) checks too: one rule, two renderers. */
interface ILabelCase {
  name: string;
  kind: string;
  label: string;
}

const FIXTURE = fileURLToPath(new URL('../../tests/fixtures/option_labels.json', import.meta.url));
const CASES = JSON.parse(readFileSync(FIXTURE, 'utf-8')) as ILabelCase[];

describe('the option label rule (tests/fixtures/option_labels.json)', () => {
  it('holds the cases of the rule', () => {
    expect(CASES.length).toBeGreaterThanOrEqual(16);
    // The buttons the browser tests click must keep their names.
    for (const name of ['Allow', 'Always', 'Always Allow', 'Reject', 'Never']) {
      expect(CASES.some(c => c.name === name && c.label === name)).toBe(true);
    }
  });

  it.each(CASES)('$name on $kind reads $label', ({ name, kind, label }) => {
    expect(optionLabel({ name, kind })).toBe(label);
    // The tooltip always says what the option does.
    expect(optionTitle({ name, kind }).startsWith(optionLabel({ name: '', kind }))).toBe(true);
  });
});
