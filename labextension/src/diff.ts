/**
 * A line diff of a file's before and after, small and dependency-free: the common head and
 * tail are cut off, the middle is compared by the longest common subsequence of its lines.
 * Past a size cap the comparison would cost too much: the file counts as replaced whole.
 */

export type LineOp = ' ' | '+' | '-';

export interface IDiffLine {
  op: LineOp;
  text: string;
}

export interface ILineDiff {
  lines: IDiffLine[];
  added: number;
  removed: number;
  /** True when the texts were too big to compare line by line: all old out, all new in. */
  whole: boolean;
}

/** The most cells (old lines × new lines of the differing middle) the LCS table may have. */
export const DIFF_CELLS = 1_000_000;

function splitLines(text: string): string[] {
  if (!text) {
    return [];
  }
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') {
    lines.pop(); // a final newline ends the last line; it is not an empty line of its own
  }
  return lines;
}

export function lineDiff(oldText: string, newText: string, cells = DIFF_CELLS): ILineDiff {
  const a = splitLines(oldText ?? '');
  const b = splitLines(newText ?? '');
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) {
    head++;
  }
  let tail = 0;
  while (
    tail < a.length - head &&
    tail < b.length - head &&
    a[a.length - 1 - tail] === b[b.length - 1 - tail]
  ) {
    tail++;
  }
  const oldMid = a.slice(head, a.length - tail);
  const newMid = b.slice(head, b.length - tail);
  const same = (lines: string[]) => lines.map(text => ({ op: ' ' as LineOp, text }));
  let middle: IDiffLine[];
  let whole = false;
  if (oldMid.length * newMid.length > cells) {
    whole = true;
    middle = [
      ...oldMid.map(text => ({ op: '-' as LineOp, text })),
      ...newMid.map(text => ({ op: '+' as LineOp, text }))
    ];
  } else {
    middle = lcsDiff(oldMid, newMid);
  }
  const lines = [...same(a.slice(0, head)), ...middle, ...same(a.slice(a.length - tail))];
  return {
    lines,
    added: lines.filter(l => l.op === '+').length,
    removed: lines.filter(l => l.op === '-').length,
    whole
  };
}

/** The classic dynamic programme: lengths of common subsequences of every pair of suffixes. */
function lcsDiff(a: string[], b: string[]): IDiffLine[] {
  const width = b.length + 1;
  const table = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      table[i * width + j] =
        a[i] === b[j]
          ? table[(i + 1) * width + j + 1] + 1
          : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  const lines: IDiffLine[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      lines.push({ op: ' ', text: a[i++] });
      j++;
    } else if (table[(i + 1) * width + j] >= table[i * width + j + 1]) {
      lines.push({ op: '-', text: a[i++] });
    } else {
      lines.push({ op: '+', text: b[j++] });
    }
  }
  while (i < a.length) {
    lines.push({ op: '-', text: a[i++] });
  }
  while (j < b.length) {
    lines.push({ op: '+', text: b[j++] });
  }
  return lines;
}

/** How many diffs `cachedLineDiff` remembers (each holds texts the transcript holds anyway). */
export const DIFF_CACHE_SIZE = 64;
const recent: Array<{ oldText: string; newText: string; result: ILineDiff }> = [];

/**
 * `lineDiff`, remembered by the texts: a transcript re-renders on every streamed token, and
 * a message's diffs come as new objects each time (`diffPartsOf`), so a memo keyed on the
 * object never hits. The same before/after gives the same result object, without running
 * the LCS again; the least recently used of DIFF_CACHE_SIZE goes first.
 */
export function cachedLineDiff(oldText: string, newText: string): ILineDiff {
  const at = recent.findIndex(entry => entry.oldText === oldText && entry.newText === newText);
  if (at >= 0) {
    const [hit] = recent.splice(at, 1);
    recent.push(hit);
    return hit.result;
  }
  const result = lineDiff(oldText, newText);
  recent.push({ oldText, newText, result });
  if (recent.length > DIFF_CACHE_SIZE) {
    recent.shift();
  }
  return result;
}

/** A run of lines to show, or how many unchanged lines are left out between two runs. */
export type DiffRow = IDiffLine | { skipped: number };

/** The changed lines with `context` unchanged lines around each change; the rest elided. */
export function diffRows(lines: IDiffLine[], context = 3): DiffRow[] {
  const keep = new Array<boolean>(lines.length).fill(false);
  lines.forEach((line, index) => {
    if (line.op !== ' ') {
      const end = Math.min(lines.length - 1, index + context);
      for (let k = Math.max(0, index - context); k <= end; k++) {
        keep[k] = true;
      }
    }
  });
  const rows: DiffRow[] = [];
  let skipped = 0;
  lines.forEach((line, index) => {
    if (keep[index]) {
      if (skipped) {
        rows.push({ skipped });
        skipped = 0;
      }
      rows.push(line);
    } else {
      skipped++;
    }
  });
  if (skipped && rows.length) {
    rows.push({ skipped });
  }
  return rows;
}
