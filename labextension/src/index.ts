/** The JupyterLab plugin: the Agent Chat sidebar, its command and its remembered agent. */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Clipboard, ICommandPalette, Notification } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import type { DocumentRegistry } from '@jupyterlab/docregistry';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import type { ISharedNotebook as ISharedNotebookModel } from '@jupyter/ydoc';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ServerConnection } from '@jupyterlab/services';
import { IStateDB } from '@jupyterlab/statedb';
import { LabIcon } from '@jupyterlab/ui-components';
import { PartialJSONValue, ReadonlyJSONObject } from '@lumino/coreutils';
import { io } from 'socket.io-client';

import { ControllerApi } from './api';
import { namesOf } from './approvals';
import { ChatConnection, ISocket } from './connection';
import { ICodeActions } from './markdown';
import { ISelection, SidebarModel } from './model';
import { ChatPanel } from './panel';
import { CLIENTS_NAMESPACE, SOCKETIO_PATH } from './protocol';
import {
  ContentEdits,
  documentPaths,
  IOpenDocument,
  keptNotice,
  metadataToKeep,
  reloadDocuments
} from './reload';
import { attachment, ICellSource, IAttachment } from './selection';
import { ChatStore, IFilesChangedEvent } from './state';

const PLUGIN_ID = '@agenstra/jupyterlab:plugin';
const PANEL_ID = 'agenstra-chat';
const STATE_KEY = `${PLUGIN_ID}:state`;
const OPEN_COMMAND = 'agenstra:open-chat';
const ASK_COMMAND = 'agenstra:ask-about-selection';

/** What the panel keeps in JupyterLab's state database (saved with the workspace). */
interface ISavedState extends ISelection {
  read?: Record<string, number>;
}

const chatIcon = new LabIcon({
  name: 'agenstra:chat',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M4 3h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 ' +
    '2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3zm5 0a1.5 1.5 0 1 0 ' +
    '0 3 1.5 1.5 0 0 0 0-3zm5 0a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3z"/></svg>'
});

/** The controller's socket: same origin, Jupyter's login cookie (or token), websocket only. */
export function openSocket(settings: ServerConnection.ISettings): ISocket {
  const base = new URL(settings.baseUrl);
  return io(base.origin + CLIENTS_NAMESPACE, {
    path: URLExt.join(base.pathname, ...SOCKETIO_PATH),
    transports: ['websocket'],
    auth: settings.token ? { token: settings.token } : {},
    withCredentials: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 10000,
    randomizationFactor: 0.5
  });
}

function codeActions(notebooks: INotebookTracker | null): ICodeActions {
  return {
    copy(code: string) {
      Clipboard.copyToSystem(code);
      Notification.info('Code copied', { autoClose: 2000 });
    },
    insert(code: string) {
      const panel = notebooks?.currentWidget;
      if (!panel) {
        Notification.warning('Open a notebook to insert code into it', { autoClose: 4000 });
        return;
      }
      NotebookActions.insertBelow(panel.content);
      panel.content.activeCell?.model.sharedModel.setSource(code);
      panel.content.activeCell?.editor?.focus();
    }
  };
}

/**
 * A notebook's selected cells (the active cell when none is selected) as an attachment:
 * what the user sees of them (outputs they collapsed stay out), without `secrets` (the
 * page's Jupyter token, which a cell may print as part of a server's URL).
 */
function selectedCells(panel: NotebookPanel, secrets: readonly string[]): IAttachment | null {
  const notebook = panel.content;
  const cells = notebook.widgets.flatMap((cell, index) =>
    notebook.isSelectedOrActive(cell)
      ? [{
        index,
        cell: cell.model.toJSON() as ICellSource,
        // A code cell's widget (CodeCell.outputHidden): a markdown cell has no outputs.
        outputsHidden: (cell as { outputHidden?: boolean }).outputHidden === true
      }]
      : []
  );
  // The kernel's language once it has said it ("" while it starts), else the saved one.
  const metadata = panel.context.model.sharedModel.getMetadata() as {
    language_info?: { name?: string };
    kernelspec?: { language?: string };
  };
  const language = metadata.language_info?.name || metadata.kernelspec?.language || '';
  return attachment(panel.context.path, cells, language, secrets);
}

/** Content edits of each open notebook, by its shared model (see ContentEdits). */
type Edits = WeakMap<object, ContentEdits>;

/** Watches every notebook from the moment it opens, before its kernel writes metadata. */
function trackEdits(notebooks: INotebookTracker | null): Edits {
  const edits: Edits = new WeakMap();
  notebooks?.widgetAdded.connect((_, panel) => {
    const shared = panel.context.model.sharedModel;
    if (!edits.has(shared)) {
      edits.set(shared, new ContentEdits(shared));
    }
  });
  return edits;
}

/** A revert that keeps the running kernel's metadata (kernelspec, language_info). */
async function revertKeepingKernel(context: DocumentRegistry.Context): Promise<void> {
  const shared = context.model.sharedModel as Partial<ISharedNotebookModel>;
  const before = shared.getMetadata?.() ?? {};
  await context.revert();
  const kept = metadataToKeep(before, shared.getMetadata?.() ?? {});
  Object.entries(kept).forEach(([key, value]) => shared.setMetadata?.(key, value as PartialJSONValue));
}

/** Every open document's context once (a document open in two views shares one). */
function openDocuments(app: JupyterFrontEnd, docs: IDocumentManager, edits: Edits): IOpenDocument[] {
  const contexts = new Map<object, IOpenDocument>();
  for (const widget of app.shell.widgets('main')) {
    const context = docs.contextForWidget(widget);
    if (context && !contexts.has(context)) {
      const tracked = edits.get(context.model.sharedModel);
      contexts.set(context, {
        path: context.path,
        dirty: context.model.dirty,
        edited: tracked ? tracked.edited : undefined, // a file: every change is the user's
        collaborative: context.model.collaborative,
        revert: () => revertKeepingKernel(context)
      });
    }
  }
  return [...contexts.values()];
}

/** Open documents an agent's turn changed show the change; unsaved edits are never lost. */
function liveReload(
  app: JupyterFrontEnd,
  docs: IDocumentManager,
  model: SidebarModel,
  edits: Edits
) {
  return async (_: unknown, change: IFilesChangedEvent) => {
    const paths = documentPaths(model.projectOf(change.key), change.paths);
    if (!paths.length) {
      return;
    }
    try {
      const { kept } = await reloadDocuments(openDocuments(app, docs, edits), paths);
      kept.forEach(path => Notification.warning(keptNotice(path), { autoClose: 10000 }));
    } catch (error) {
      Notification.error(`Could not reload a changed document: ${error}`, { autoClose: 8000 });
    }
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A sidebar to chat with agenstra agents.',
  autoStart: true,
  requires: [IRenderMimeRegistry],
  optional: [
    ILayoutRestorer,
    ICommandPalette,
    INotebookTracker,
    IStateDB,
    IDefaultFileBrowser,
    IDocumentManager
  ],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    state: IStateDB | null,
    browser: IDefaultFileBrowser | null,
    docs: IDocumentManager | null
  ) => {
    const settings = ServerConnection.makeSettings();
    const api = new ControllerApi(settings);
    const connection = new ChatConnection(openSocket(settings), new ChatStore(), (c, a, after) =>
      api.messages(c, a, after)
    );
    const model = new SidebarModel(api, connection);
    model.currentFolder = () => browser?.model.path ?? '';
    if (docs) {
      connection.store.filesChanged.connect(liveReload(app, docs, model, trackEdits(notebooks)));
    }
    const panel = new ChatPanel(model, rendermime, codeActions(notebooks));
    panel.id = PANEL_ID;
    panel.title.icon = chatIcon;
    panel.title.caption = 'Agent Chat';
    app.serviceManager.user.ready
      .then(() => {
        panel.currentUser = namesOf(app.serviceManager.user.identity);
        panel.update();
      })
      .catch(() => undefined); // no identity: answers keep the recorded name
    app.shell.add(panel, 'left', { rank: 900 });
    restorer?.add(panel, PANEL_ID);

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Open Agent Chat',
      caption: 'Chat with agents in the sidebar',
      icon: chatIcon,
      execute: () => {
        app.shell.activateById(PANEL_ID);
        panel.node.querySelector<HTMLTextAreaElement>('textarea')?.focus();
      }
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'Agent Chat' });

    // "Ask agent about selection": the active notebook's cells go with the next message.
    app.commands.addCommand(ASK_COMMAND, {
      label: 'Ask agent about selection',
      caption: 'Attach the selected cells to the next message in Agent Chat',
      icon: chatIcon,
      isEnabled: () => !!notebooks?.currentWidget,
      execute: () => {
        const current = notebooks?.currentWidget;
        if (!current) {
          return;
        }
        // Read when asked: the token this page authenticates with, by either source.
        const secrets = [settings.token, PageConfig.getToken()].filter(token => !!token);
        model.attach(selectedCells(current, secrets));
        app.shell.activateById(PANEL_ID);
        // After the palette or menu that ran it has closed and given the focus back.
        window.setTimeout(() => panel.node.querySelector<HTMLTextAreaElement>('textarea')?.focus(), 50);
      }
    });
    palette?.addItem({ command: ASK_COMMAND, category: 'Agent Chat' });
    app.contextMenu.addItem({ command: ASK_COMMAND, selector: '.jp-Notebook .jp-Cell', rank: 20 });
    model.askAboutSelection = () => void app.commands.execute(ASK_COMMAND);
    const showNotebook = () => model.setActiveNotebook(notebooks?.currentWidget?.context.path ?? null);
    notebooks?.currentChanged.connect(showNotebook);
    showNotebook();

    // The last selected agent, and how far each agent was read, come back with the page.
    // A selection is saved at once; read positions at most once a second, within a second
    // of a change: a debounce reset by every change never saved while an agent streamed.
    let saving = 0;
    const save = () => {
      window.clearTimeout(saving);
      saving = 0;
      const saved: ISavedState = { ...model.selection, read: model.store.readPositions() };
      void state?.save(STATE_KEY, saved as unknown as ReadonlyJSONObject);
    };
    const remember = () => {
      if (!saving) {
        saving = window.setTimeout(save, 1000);
      }
    };
    void Promise.all([app.restored, state?.fetch(STATE_KEY)]).then(([, value]) => {
      const saved = value as unknown as ISavedState | undefined;
      Object.entries(saved?.read ?? {}).forEach(([key, seq]) =>
        model.store.restoreReadSeq(key, seq)
      );
      model.selected.connect(save);
      model.store.changed.connect(remember);
      return model.load(saved);
    });
  }
};

export default plugin;
