import { describe, expect, it } from 'vitest';

import { ControllerApi } from '../src/api';
import { ChatConnection } from '../src/connection';
import { SidebarModel } from '../src/model';
import {
  attachment,
  CELL_CHARS,
  CONTEXT_CHARS,
  cellRanges,
  ICellSource,
  outputText,
  selectionContext,
  splitContext,
  TOKEN_REMOVED,
  withContext
} from '../src/selection';
import { ChatStore } from '../src/state';
import { FakeSocket } from './fakes';

function code(source: string, count: number | null = null, outputs: any[] = []): ICellSource {
  return { cell_type: 'code', source, execution_count: count, outputs };
}

/** The fenced blocks of a context section: [opening fence line, body]. */
function blocks(context: string): Array<[string, string]> {
  const found: Array<[string, string]> = [];
  const lines = context.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^(`{3,})(\w*)$/);
    if (!open) {
      continue;
    }
    const fence = open[1];
    const end = lines.findIndex((line, j) => j > i && line === fence);
    expect(end).toBeGreaterThan(i);
    found.push([lines[i], lines.slice(i + 1, end).join('\n')]);
    i = end;
  }
  return found;
}

describe('selectionContext', () => {
  it('frames the cells as the kernel frames variables, one fenced block per cell', () => {
    const text = selectionContext('work/analysis.ipynb', [
      { index: 3, cell: code('x + 1', 5, [{ output_type: 'execute_result', data: { 'text/plain': '2' } }]) },
      { index: 2, cell: { cell_type: 'markdown', source: ['# Title\n', 'words'] } }
    ], 'python');
    expect(text.startsWith('Context from the notebook work/analysis.ipynb (cells 3-4):\n\n')).toBe(true);
    expect(text.endsWith('\n\nEnd of context.')).toBe(true);
    const found = blocks(text);
    expect(found.map(([fence]) => fence)).toEqual(['```markdown', '```python']); // in notebook order
    expect(found[0][1]).toBe('# cell 3 (markdown)\n# Title\nwords');
    expect(found[1][1]).toBe('# cell 4 (code, execution count 5)\nx + 1\n# output:\n2');
    expect(selectionContext('a.ipynb', [])).toBe('');
  });

  it('uses fences that backticks in a cell cannot close', () => {
    const source = 'doc = """\n```\nnot the end\n````\n"""';
    const found = blocks(selectionContext('a.ipynb', [{ index: 0, cell: code(source) }]));
    expect(found).toHaveLength(1);
    expect(found[0][0]).toBe('`````text'); // longer than the cell's longest run (4)
    expect(found[0][1]).toContain(source);
  });

  it('reads outputs as short text: streams, text/plain, errors by name, others named', () => {
    expect(outputText({ output_type: 'stream', text: ['a\n', 'b\n'] })).toBe('a\nb\n');
    expect(outputText({ output_type: 'error', ename: 'ZeroDivisionError',
      evalue: '\x1b[0;31mdivision by zero\x1b[0m' })).toBe('ZeroDivisionError: division by zero');
    expect(outputText({ output_type: 'display_data', data: { 'image/png': 'iVBOR' } }))
      .toBe('[image/png output]');
    const text = selectionContext('a.ipynb', [{ index: 0, cell: code('plot()', 1, [
      { output_type: 'stream', text: 'printed\n' },
      { output_type: 'display_data', data: { 'image/png': 'iVBOR'.repeat(1000) } }
    ]) }]);
    expect(text).toContain('# output:\nprinted\n[image/png output]\n```');
    expect(text).not.toContain('iVBOR');
  });

  it('cuts a cell at CELL_CHARS and the whole at CONTEXT_CHARS, saying so', () => {
    const big = 'x'.repeat(CELL_CHARS * 3);
    const one = blocks(selectionContext('a.ipynb', [{ index: 0, cell: code(big) }]))[0][1];
    expect(one.length).toBeLessThan(CELL_CHARS + 40);
    expect(one).toMatch(/… \[\d+ more characters\]$/);

    const many = Array.from({ length: 10 }, (_, index) => ({ index, cell: code(big) }));
    const text = selectionContext('a.ipynb', many);
    expect(text.length).toBeLessThan(CONTEXT_CHARS + 2000);
    expect(text).toContain('(cells 1-10)');
    expect(text).toContain('# cell 10: left out (the context is limited to 16384 characters)');
    expect(blocks(text)).toHaveLength(10); // every cell is named, kept or not
  });

  it('names the cells as ranges', () => {
    expect(cellRanges([0])).toBe('1');
    expect(cellRanges([4, 0, 2, 3])).toBe('1, 3-5');
  });
});

describe('the attachment and the sent message', () => {
  it('labels the chip and folds back out of the sent text', () => {
    const attached = attachment('work/analysis.ipynb', [
      { index: 0, cell: code('a = 1') }, { index: 1, cell: code('a') }
    ])!;
    expect(attached.label).toBe('2 cells from analysis.ipynb');
    const sent = withContext(attached.text, 'what does this do?');
    expect(splitContext(sent)).toEqual([attached.text, 'what does this do?']);
    expect(splitContext('what does this do?')).toEqual(['', 'what does this do?']);
    // The kernel's %%agent --with section folds the same way.
    const kernel = 'Context from the kernel (variables x):\n\n```text\nx: int\n1\n```\n\nEnd of context.';
    expect(splitContext(`${kernel}\n\nhi`)).toEqual([kernel, 'hi']);
  });

  it('leaves out outputs the user collapsed, and says on the chip when outputs go', () => {
    const printed = [{ output_type: 'stream', text: 'secret-looking output\n' }];
    const shown = { index: 0, cell: code('print(1)', 1, [{ output_type: 'stream', text: '1\n' }]) };
    const hidden = { index: 1, cell: code('print(s)', 2, printed), outputsHidden: true };
    const both = attachment('work/x.ipynb', [shown, hidden])!;
    expect(both.label).toBe('2 cells from x.ipynb, with outputs');
    expect(both.text).toContain('# cell 1 (code, execution count 1)\nprint(1)\n# output:\n1\n');
    expect(both.text).toContain('# cell 2 (code, execution count 2)\nprint(s)\n```');
    expect(both.text).not.toContain('secret-looking output');

    const alone = attachment('work/x.ipynb', [hidden])!;
    expect(alone.label).toBe('1 cell from x.ipynb'); // nothing of the outputs goes
    expect(alone.text).not.toContain('# output:');
    // Collapsed in the file's metadata (nbformat's marks) counts as hidden as well.
    const marked = (metadata: ICellSource['metadata']) =>
      attachment('x.ipynb', [{ index: 0, cell: { ...code('s', 1, printed), metadata } }])!;
    expect(marked({ jupyter: { outputs_hidden: true } }).text).not.toContain('secret-looking');
    expect(marked({ collapsed: true }).label).toBe('1 cell from x.ipynb');
    expect(marked({ collapsed: false }).label).toBe('1 cell from x.ipynb, with outputs');
    // No chip word for outputs that are empty, or of a cell left out by the size limit.
    const quiet = code('x = 1', 1, [{ output_type: 'stream', text: '\n' }]);
    expect(attachment('x.ipynb', [{ index: 0, cell: quiet }])!.label).toBe('1 cell from x.ipynb');
    const big = { index: 0, cell: code('x'.repeat(CELL_CHARS), 1) };
    const late = Array.from({ length: 5 }, (_, i) => ({ ...big, index: i }));
    late.push({ index: 9, cell: code('y'.repeat(3950), 2, [{ output_type: 'stream', text: 'late\n' }]) });
    expect(attachment('x.ipynb', late)!.text).toContain('# cell 10: left out');
    expect(attachment('x.ipynb', late)!.label).toBe('6 cells from x.ipynb');
    // Nor when the source alone fills the cell's share and the cut takes the outputs.
    const pushed = code('z'.repeat(CELL_CHARS), 3, [{ output_type: 'stream', text: 'gone\n' }]);
    expect(attachment('x.ipynb', [{ index: 0, cell: pushed }])!.label).toBe('1 cell from x.ipynb');
  });

  it('replaces the page\'s Jupyter token in sources and outputs', () => {
    const token = 'a1b2c3d4e5f6a7b8c9d0';
    const url = `http://localhost:8888/lab?token=${token}`;
    const cell = code(`requests.get("${url}")`, 1, [
      { output_type: 'stream', text: `Jupyter at ${url}\n` },
      { output_type: 'execute_result', data: { 'text/plain': `'${token}'` } },
      { output_type: 'error', ename: 'HTTPError', evalue: `401 for ${url}` }
    ]);
    const attached = attachment('x.ipynb', [{ index: 0, cell }], 'python', [token, ''])!;
    expect(attached.text).not.toContain(token);
    expect(attached.text).toContain(`requests.get("http://localhost:8888/lab?token=${TOKEN_REMOVED}")`);
    expect(attached.text).toContain(`Jupyter at http://localhost:8888/lab?token=${TOKEN_REMOVED}`);
    expect(attached.text).toContain(`'${TOKEN_REMOVED}'`);
    expect(attached.text).toContain(`HTTPError: 401 for http://localhost:8888/lab?token=${TOKEN_REMOVED}`);
    // A token at the cut of a long cell is replaced before the cut: no prefix of it is left.
    const long = code(`${'x'.repeat(CELL_CHARS - 100)}${token.repeat(20)}`);
    const cutText = attachment('x.ipynb', [{ index: 0, cell: long }], '', [token])!.text;
    expect(cutText).not.toContain(token.slice(0, 8));
    // Without a token (an empty one) nothing is replaced.
    expect(attachment('x.ipynb', [{ index: 0, cell }], 'python', [''])!.text).toContain(token);
  });

  it('goes in front of the next message and is cleared once it was accepted', async () => {
    const api = {
      clients: async () => [{ id: 'local', name: 'local' }],
      agents: async () => [{ id: 'a1', name: 'assistant' }],
      catalog: async () => ({ providers: [], runtimes: [] }),
      messages: async () => []
    } as unknown as ControllerApi;
    const socket = new FakeSocket();
    socket.connect();
    const model = new SidebarModel(api, new ChatConnection(socket, new ChatStore(), () =>
      Promise.resolve([])));
    await model.load();
    const attached = attachment('n.ipynb', [{ index: 0, cell: code('a = 1') }])!;
    model.attach(attached);
    socket.answer = (_event, payload) =>
      payload?.event === 'chat' ? { ok: false, error: { code: 'X', message: 'no' } } : { ok: true };
    expect(await model.send('why?')).toBe(false);
    expect(model.attachment).toBe(attached); // not sent: still attached
    socket.answer = () => ({ ok: true });
    expect(await model.send('why?')).toBe(true);
    expect(model.attachment).toBeNull();
    expect(await model.send('and now?')).toBe(true);
    const sent = socket.take()
      .filter(e => e.payload?.event === 'chat')
      .map(e => e.payload.payload);
    expect(sent.map(p => p.message)).toEqual([`${attached.text}\n\nwhy?`,
      `${attached.text}\n\nwhy?`, 'and now?']);
    expect(sent[1].correlationId).toBe(sent[0].correlationId); // the retry is the same message
  });
});
