/**
 * "Ask agent about selection": a notebook's selected cells as a context section in front
 * of the next message, in the shape the kernel side uses (`agenstra_jupyter/variables.py`:
 * "Context from the kernel (variables df):", one fenced block per item, "End of context.").
 * A model reads it; the user's bubble folds it (`splitContext`). Bounded per cell and in
 * all, so a notebook with a 10 MB output cannot flood the message. Only what the user can
 * see goes: outputs they collapsed stay out, and the page's Jupyter token (a printed
 * server URL, a `?token=` in a cell) is replaced by TOKEN_REMOVED.
 */

export const CELL_CHARS = 4 * 1024; // one cell's block: source and outputs
export const CONTEXT_CHARS = 16 * 1024; // all cells of one message together
export const CONTEXT_PREFIX = 'Context from the '; // "…kernel (variables …):", "…notebook …:"
export const CONTEXT_END = 'End of context.';
export const TOKEN_REMOVED = '[token removed]';

/** What is read of a cell: its nbformat JSON (`cell.model.toJSON()`) fits. */
export interface ICellSource {
  cell_type: string;
  source: string | string[];
  execution_count?: number | null;
  outputs?: readonly IOutputSource[];
  /** nbformat's marks of collapsed outputs (JupyterLab keeps them in step with the view). */
  metadata?: { collapsed?: unknown; jupyter?: { outputs_hidden?: unknown } };
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
  /** The cell's outputs are collapsed in the notebook (the cell widget's `outputHidden`). */
  outputsHidden?: boolean;
}

/** What the composer holds until the message is sent. */
export interface IAttachment {
  /** The context section, as sent in front of the message. */
  text: string;
  /** The chip: "2 cells from analysis.ipynb", "…, with outputs" when outputs go too. */
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

/** `text` with every occurrence of each secret (the page's Jupyter token) replaced. */
export function redact(text: string, secrets: readonly string[]): string {
  return secrets.reduce(
    (result, secret) => (secret ? result.split(secret).join(TOKEN_REMOVED) : result),
    text
  );
}

/** Whether the user sees the cell's outputs: not collapsed, in the view or in metadata. */
function outputsShown({ cell, outputsHidden }: ISelectedCell): boolean {
  return !outputsHidden && cell.metadata?.collapsed !== true &&
    cell.metadata?.jupyter?.outputs_hidden !== true;
}

/** A cell's outputs as text lines: none when the user does not see them. */
function outputLines(selected: ISelectedCell): string[] {
  if (!outputsShown(selected)) {
    return [];
  }
  return (selected.cell.outputs ?? [])
    .map(output => outputText(output).replace(/\n+$/, ''))
    .filter(text => text.trim());
}

/**
 * One cell's block body: a line that says what it is, its source, then its outputs.
 * Secrets go before the cut, so no part of one is left at the end of a cut cell.
 */
function cellBody(selected: ISelectedCell, secrets: readonly string[]): ICellBody {
  const { index, cell } = selected;
  const count = cell.execution_count;
  const ran = cell.cell_type === 'code' ? `, execution count ${count ?? 'none'}` : '';
  const head = redact(`# cell ${index + 1} (${cell.cell_type}${ran})\n${joined(cell.source)}`, secrets);
  const outputs = outputLines(selected);
  const full = outputs.length ? `${head}\n${redact(['# output:', ...outputs].join('\n'), secrets)}` : head;
  // Outputs go when some of them is left after the cut (a long source can push them out).
  return { body: cut(full, CELL_CHARS), outputs: outputs.length > 0 && head.length < CELL_CHARS };
}

interface ICellBody {
  body: string;
  /** Outputs are in the body. */
  outputs: boolean;
}

/** The fence's info string: the kernel's language for code, else what the cell is. */
function fenceInfo(cell: ICellSource, language: string): string {
  if (cell.cell_type === 'code') {
    return language || 'text';
  }
  return cell.cell_type === 'markdown' ? 'markdown' : 'text';
}

/** The context section, and whether any cell's outputs made it in. */
function buildContext(
  path: string,
  cells: readonly ISelectedCell[],
  language: string,
  secrets: readonly string[]
): { text: string; outputs: boolean } {
  if (!cells.length) {
    return { text: '', outputs: false };
  }
  const ordered = [...cells].sort((a, b) => a.index - b.index);
  const blocks: string[] = [];
  let used = 0;
  let outputs = false;
  for (const selected of ordered) {
    let { body, outputs: withOutputs } = cellBody(selected, secrets);
    let info = fenceInfo(selected.cell, language);
    if (used + body.length > CONTEXT_CHARS) {
      body = `# cell ${selected.index + 1}: left out (the context is limited to ${CONTEXT_CHARS} characters)`;
      info = 'text';
      withOutputs = false;
    }
    used += body.length;
    outputs ||= withOutputs;
    const fence = '`'.repeat(Math.max(3, longestBacktickRun(body) + 1));
    blocks.push(`${fence}${info}\n${body}\n${fence}`);
  }
  const which = ordered.length === 1 ? 'cell' : 'cells';
  const where = redact(path, secrets);
  const header = `${CONTEXT_PREFIX}notebook ${where} (${which} ${cellRanges(ordered.map(c => c.index))}):`;
  return { text: [header, ...blocks, CONTEXT_END].join('\n\n'), outputs };
}

/**
 * The selected cells of the notebook at `path` as one delimited section (at most about
 * CONTEXT_CHARS), "" for no cells. Each cell is one fenced block whose fence is longer than
 * any run of backticks in it, so a cell's own ``` cannot end it. Outputs the user collapsed
 * are left out; each of `secrets` (the page's Jupyter token) is replaced by TOKEN_REMOVED.
 */
export function selectionContext(
  path: string,
  cells: readonly ISelectedCell[],
  language = '',
  secrets: readonly string[] = []
): string {
  return buildContext(path, cells, language, secrets).text;
}

/** The chip's text: "2 cells from analysis.ipynb", "…, with outputs" when they go too. */
export function attachmentLabel(path: string, count: number, outputs = false): string {
  const name = path.split('/').pop() || path;
  const what = `${count} ${count === 1 ? 'cell' : 'cells'} from ${name}`;
  return outputs ? `${what}, with outputs` : what;
}

export function attachment(
  path: string,
  cells: readonly ISelectedCell[],
  language = '',
  secrets: readonly string[] = []
): IAttachment | null {
  const { text, outputs } = buildContext(path, cells, language, secrets);
  const label = attachmentLabel(redact(path, secrets), cells.length, outputs);
  return text ? { text, label, path } : null;
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
