/**
 * "Ask agent about selection": a notebook's selected cells as a context section in front
 * of the next message, in the shape the kernel side uses (`agenstra_jupyter/variables.py`:
 * "Context from the kernel (variables df):", one fenced block per item, "End of context.").
 * A model reads it; the user's bubble folds it (`splitContext`). Bounded per cell and in
 * all, so a notebook with a 10 MB output cannot flood the message.
 */

export const CELL_CHARS = 4 * 1024; // one cell's block: source and outputs
export const CONTEXT_CHARS = 16 * 1024; // all cells of one message together
export const CONTEXT_PREFIX = 'Context from the '; // "…kernel (variables …):", "…notebook …:"
export const CONTEXT_END = 'End of context.';

/** What is read of a cell: its nbformat JSON (`cell.model.toJSON()`) fits. */
export interface ICellSource {
  cell_type: string;
  source: string | string[];
  execution_count?: number | null;
  outputs?: readonly IOutputSource[];
}

export interface IOutputSource {
  output_type: string;
  text?: string | string[];
  data?: Record<string, unknown>;
  ename?: string;
  evalue?: string;
}

/** A cell of the selection and where it is in its notebook (0-based). */
export interface ISelectedCell {
  index: number;
  cell: ICellSource;
}

/** What the composer holds until the message is sent. */
export interface IAttachment {
  /** The context section, as sent in front of the message. */
  text: string;
  /** The chip: "2 cells from analysis.ipynb". */
  label: string;
  path: string;
}

/** `text` up to `limit` characters, saying how much was left out (variables.cut). */
export function cut(text: string, limit: number): string {
  if (text.length <= limit) {
    return text;
  }
  return `${text.slice(0, limit)}… [${text.length - limit} more characters]`;
}

function joined(value: string | string[] | undefined): string {
  return Array.isArray(value) ? value.join('') : (value ?? '');
}

/** ANSI colours of tracebacks and coloured prints mean nothing to a model. */
function plain(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}

/** An output as text: streams and text/plain as they are, errors by name, other kinds named. */
export function outputText(output: IOutputSource): string {
  switch (output.output_type) {
    case 'stream':
      return plain(joined(output.text));
    case 'error':
      return plain(`${output.ename ?? 'Error'}: ${output.evalue ?? ''}`);
    case 'execute_result':
    case 'display_data': {
      const data = output.data ?? {};
      const text = data['text/plain'];
      if (typeof text === 'string' || Array.isArray(text)) {
        return plain(joined(text as string | string[]));
      }
      const kinds = Object.keys(data);
      return kinds.length ? `[${kinds.join(', ')} output]` : '';
    }
    default:
      return '';
  }
}

/** "3", "3-4", "1, 3-5": the 1-based numbers of the cells, as ranges. */
export function cellRanges(indices: readonly number[]): string {
  const sorted = [...new Set(indices)].sort((a, b) => a - b);
  const ranges: string[] = [];
  for (let i = 0; i < sorted.length; i++) {
    const start = sorted[i];
    while (i + 1 < sorted.length && sorted[i + 1] === sorted[i] + 1) {
      i++;
    }
    ranges.push(start === sorted[i] ? `${start + 1}` : `${start + 1}-${sorted[i] + 1}`);
  }
  return ranges.join(', ');
}

function longestBacktickRun(text: string): number {
  let longest = 0;
  for (const run of text.match(/`+/g) ?? []) {
    longest = Math.max(longest, run.length);
  }
  return longest;
}

/** One cell's block body: a line that says what it is, its source, then its outputs. */
function cellBody({ index, cell }: ISelectedCell): string {
  const count = cell.execution_count;
  const ran = cell.cell_type === 'code' ? `, execution count ${count ?? 'none'}` : '';
  const lines = [`# cell ${index + 1} (${cell.cell_type}${ran})`, joined(cell.source)];
  const outputs = (cell.outputs ?? [])
    .map(output => outputText(output).replace(/\n+$/, ''))
    .filter(text => text.trim());
  if (outputs.length) {
    lines.push('# output:', outputs.join('\n'));
  }
  return cut(lines.join('\n'), CELL_CHARS);
}

/** The fence's info string: the kernel's language for code, else what the cell is. */
function fenceInfo(cell: ICellSource, language: string): string {
  if (cell.cell_type === 'code') {
    return language || 'text';
  }
  return cell.cell_type === 'markdown' ? 'markdown' : 'text';
}

/**
 * The selected cells of the notebook at `path` as one delimited section (at most about
 * CONTEXT_CHARS), "" for no cells. Each cell is one fenced block whose fence is longer than
 * any run of backticks in it, so a cell's own ``` cannot end it.
 */
export function selectionContext(
  path: string,
  cells: readonly ISelectedCell[],
  language = ''
): string {
  if (!cells.length) {
    return '';
  }
  const ordered = [...cells].sort((a, b) => a.index - b.index);
  const blocks: string[] = [];
  let used = 0;
  for (const selected of ordered) {
    let body = cellBody(selected);
    let info = fenceInfo(selected.cell, language);
    if (used + body.length > CONTEXT_CHARS) {
      body = `# cell ${selected.index + 1}: left out (the context is limited to ${CONTEXT_CHARS} characters)`;
      info = 'text';
    }
    used += body.length;
    const fence = '`'.repeat(Math.max(3, longestBacktickRun(body) + 1));
    blocks.push(`${fence}${info}\n${body}\n${fence}`);
  }
  const which = ordered.length === 1 ? 'cell' : 'cells';
  const header = `${CONTEXT_PREFIX}notebook ${path} (${which} ${cellRanges(ordered.map(c => c.index))}):`;
  return [header, ...blocks, CONTEXT_END].join('\n\n');
}

/** The chip's text: "2 cells from analysis.ipynb". */
export function attachmentLabel(path: string, count: number): string {
  const name = path.split('/').pop() || path;
  return `${count} ${count === 1 ? 'cell' : 'cells'} from ${name}`;
}

export function attachment(
  path: string,
  cells: readonly ISelectedCell[],
  language = ''
): IAttachment | null {
  const text = selectionContext(path, cells, language);
  return text ? { text, label: attachmentLabel(path, cells.length), path } : null;
}

/** The message as sent: the context section first, then the user's text (with_context). */
export function withContext(block: string, message: string): string {
  return block ? `${block}\n\n${message}` : message;
}

/**
 * A sent message as [context section, the user's text]; ["", text] without one. The
 * kernel's ("Context from the kernel …") and the sidebar's ("… the notebook …") alike, as
 * `variables.split_context` splits the kernel's.
 */
export function splitContext(text: string): [string, string] {
  const marker = `\n\n${CONTEXT_END}\n\n`;
  const end = text.indexOf(marker);
  if (!text.startsWith(CONTEXT_PREFIX) || end < 0) {
    return ['', text];
  }
  return [text.slice(0, end + 2 + CONTEXT_END.length), text.slice(end + marker.length)];
}
