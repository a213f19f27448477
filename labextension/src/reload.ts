/**
 * Live reload: after an agent's turn changed files (`filesChanged`), open documents of those
 * files show the agent's edit at once, unless the user has unsaved changes of their content.
 * A document open with real-time collaboration is never reloaded: it shows the agent's edit
 * already (the notebook tools write into its shared document, and the server reloads it
 * from disk when a file changes under it), and a revert would put the file's older bytes
 * over it.
 */

import { ISignal } from '@lumino/signaling';

/** What reloading needs of an open document (a DocumentRegistry context). */
export interface IOpenDocument {
  readonly path: string;
  /** Unsaved changes, of any kind. */
  readonly dirty: boolean;
  /**
   * Unsaved changes of the user's content (a notebook's cells, a file's text): reloading
   * would throw them away. Unknown (undefined): every unsaved change counts.
   */
  readonly edited?: boolean;
  /** Backed by a shared document (real-time collaboration): it updates by itself. */
  readonly collaborative?: boolean;
  revert(): Promise<void>;
}

export interface IReloadOutcome {
  /** Documents reloaded from disk. */
  reverted: string[];
  /** Documents left alone because they hold unsaved changes. */
  kept: string[];
  /** Documents left alone because they are shared documents that update by themselves. */
  live: string[];
}

/**
 * The document paths (relative to the Jupyter root) of paths relative to an agent's
 * workspace. An agent without a project works in a private folder: nothing of it is open.
 * A path leaving the project (`..`, absolute) is dropped: it names no file of the project.
 */
export function documentPaths(project: string | null | undefined, paths: string[]): string[] {
  if (!project) {
    return [];
  }
  const base = project.replace(/\/+$/, '');
  const result: string[] = [];
  for (const path of paths) {
    if (typeof path !== 'string' || !path || path.startsWith('/')) {
      continue;
    }
    const parts = path.split('/').filter(part => part && part !== '.');
    if (!parts.length || parts.includes('..')) {
      continue;
    }
    const full = `${base}/${parts.join('/')}`;
    if (!result.includes(full)) {
      result.push(full);
    }
  }
  return result;
}

/**
 * Reverts each open document of `paths` (each context once) unless the user changed its
 * content: a notebook whose only unsaved changes are JupyterLab's own metadata (a kernel
 * started) reloads.
 */
export async function reloadDocuments(
  documents: Iterable<IOpenDocument>,
  paths: string[]
): Promise<IReloadOutcome> {
  const wanted = new Set(paths);
  const outcome: IReloadOutcome = { reverted: [], kept: [], live: [] };
  const seen = new Set<IOpenDocument>();
  for (const document of documents) {
    if (seen.has(document) || !wanted.has(document.path)) {
      continue;
    }
    seen.add(document);
    if (document.collaborative) {
      outcome.live.push(document.path);
    } else if (document.dirty && document.edited !== false) {
      outcome.kept.push(document.path);
    } else {
      await document.revert();
      outcome.reverted.push(document.path);
    }
  }
  return outcome;
}

/** What the user is told about a document that changed under their unsaved edits. */
export function keptNotice(path: string): string {
  return `${path} changed on disk; you have unsaved changes`;
}

/** What changes in a cell (@jupyter/ydoc's CellChange): what edit tracking looks at. */
export interface ICellChange {
  sourceChange?: unknown;
  outputsChange?: unknown;
  executionCountChange?: unknown;
  attachmentsChange?: unknown;
  metadataChange?: unknown;
}

/** A notebook's cell as edit tracking sees it (@jupyter/ydoc's YCell). */
export interface ISharedCell {
  readonly changed: ISignal<any, ICellChange>;
}

/** What changes in a notebook (@jupyter/ydoc's NotebookChange, and its dirty state). */
export interface INotebookChange {
  cellsChange?: Array<{ insert?: ISharedCell[]; delete?: number; retain?: number }>;
  metadataChange?: unknown;
  nbformatChanged?: unknown;
  stateChange?: Array<{ name: string; newValue?: unknown }>;
}

/** A notebook's shared model as edit tracking sees it (@jupyter/ydoc's YNotebook). */
export interface ISharedNotebook {
  readonly changed: ISignal<any, INotebookChange>;
  readonly cells: readonly ISharedCell[];
}

/** Notebook metadata JupyterLab writes by itself: a kernel starting fills these in. */
const JUPYTER_NOTEBOOK_KEYS: ReadonlySet<string> = new Set(['kernelspec', 'language_info']);
/** Cell metadata JupyterLab writes by itself: run timings, and trust when it checks it. */
const JUPYTER_CELL_KEYS: ReadonlySet<string> = new Set(['execution', 'trusted']);

/**
 * Whether a metadata change (@jupyter/ydoc's MapChanges: a Map of the keys changed) holds a
 * key other than JupyterLab's own. A change of a shape not understood counts as the user's:
 * keeping an edit by mistake costs a notice, reverting one loses the user's work.
 */
function usersMetadata(change: unknown, jupyters: ReadonlySet<string>): boolean {
  if (change === undefined || change === null) {
    return false;
  }
  let keys: string[];
  if (change instanceof Map) {
    keys = [...change.keys()].map(String);
  } else if (typeof change === 'object') {
    keys = Object.keys(change);
  } else {
    return true;
  }
  return keys.some(key => !jupyters.has(key));
}

/**
 * Whether the user changed a notebook's content since it was last loaded, saved or reverted.
 *
 * JupyterLab marks a notebook dirty by itself (a starting kernel writes kernelspec and
 * language_info into its metadata, running a cell its `execution` timings): `dirty` alone
 * would keep a notebook nobody touched from showing the agent's edit. Cells added, removed
 * or moved, their source, outputs, execution counts, attachments and metadata (a tag) and
 * the notebook's metadata are the user's, except the keys JupyterLab writes itself
 * (JUPYTER_NOTEBOOK_KEYS, JUPYTER_CELL_KEYS). The model turning clean (its `dirty` state
 * set false: load, save, revert) starts over.
 */
export class ContentEdits {
  private _edited = false;

  constructor(notebook: ISharedNotebook) {
    notebook.cells.forEach(cell => this._watch(cell));
    notebook.changed.connect(this._onNotebook, this);
  }

  /** Unsaved changes of the user's (cells, metadata) since the model was last clean. */
  get edited(): boolean {
    return this._edited;
  }

  private _watch(cell: ISharedCell): void {
    cell.changed.connect(this._onCell, this); // connecting twice is once (lumino)
  }

  private _onNotebook(_: unknown, change: INotebookChange): void {
    for (const delta of change.cellsChange ?? []) {
      delta.insert?.forEach(cell => this._watch(cell));
    }
    if (
      change.cellsChange?.length ||
      change.nbformatChanged ||
      usersMetadata(change.metadataChange, JUPYTER_NOTEBOOK_KEYS)
    ) {
      this._edited = true;
    }
    if (change.stateChange?.some(state => state.name === 'dirty' && state.newValue === false)) {
      this._edited = false;
    }
  }

  private _onCell(_: unknown, change: ICellChange): void {
    if (
      change.sourceChange ||
      change.outputsChange ||
      change.executionCountChange ||
      change.attachmentsChange ||
      usersMetadata(change.metadataChange, JUPYTER_CELL_KEYS)
    ) {
      this._edited = true;
    }
  }
}

/** Metadata JupyterLab fills in with empty placeholders when the file has none. */
const KERNEL_METADATA = ['kernelspec', 'language_info'];

/**
 * The notebook metadata to put back after a revert: what the open notebook had (its
 * running kernel's kernelspec and language_info) and the file on disk lacks, or has only
 * as JupyterLab's empty placeholders. Without it a reloaded notebook forgets its kernel's
 * language (no syntax highlighting) until the kernel restarts.
 */
export function metadataToKeep(
  before: Record<string, unknown>,
  after: Record<string, unknown>
): Record<string, unknown> {
  const kept: Record<string, unknown> = {};
  for (const key of KERNEL_METADATA) {
    const old = before[key] as { name?: unknown } | undefined;
    const now = after[key] as { name?: unknown } | undefined;
    if (old?.name && !now?.name) {
      kept[key] = old;
    }
  }
  return kept;
}
