/**
 * Agent text rendered by JupyterLab's own markdown renderer, untrusted so its
 * sanitizer strips anything that could run, then stripped of anything that would load by
 * itself (remote images wait for a click); code blocks get copy and insert buttons.
 */

import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { addIcon, copyIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { enableImageLoading, withoutRemoteLoads } from './images';

const MARKDOWN = 'text/markdown';

export interface ICodeActions {
  copy(code: string): void;
  insert(code: string): void;
}

export interface IMarkdownProps {
  text: string;
  rendermime: IRenderMimeRegistry;
  actions: ICodeActions;
}

export function Markdown({ text, rendermime, actions }: IMarkdownProps): JSX.Element {
  const host = React.useRef<HTMLDivElement>(null);
  React.useEffect(() => {
    const renderer = guarded(rendermime).createRenderer(MARKDOWN);
    const model = new MimeModel({ data: { [MARKDOWN]: text }, trusted: false });
    let disposed = false;
    void renderer.renderModel(model).then(() => {
      if (!disposed && host.current) {
        addCodeButtons(renderer.node, actions);
        enableImageLoading(renderer.node);
        host.current.replaceChildren(renderer.node);
      }
    });
    return () => {
      disposed = true;
      renderer.dispose();
    };
  }, [text, rendermime]);
  return <div className="jp-AgenstraChat-markdown" ref={host} />;
}

const clones = new WeakMap<IRenderMimeRegistry, IRenderMimeRegistry>();

/** `rendermime` with a sanitizer that also blocks remote loads, made once per registry. */
function guarded(rendermime: IRenderMimeRegistry): IRenderMimeRegistry {
  let clone = clones.get(rendermime);
  if (!clone) {
    clone = rendermime.clone({ sanitizer: withoutRemoteLoads(rendermime.sanitizer) });
    clones.set(rendermime, clone);
  }
  return clone;
}

function addCodeButtons(root: HTMLElement, actions: ICodeActions): void {
  root.querySelectorAll('pre').forEach(pre => {
    const code = pre.textContent ?? '';
    const bar = document.createElement('div');
    bar.className = 'jp-AgenstraChat-codeActions';
    bar.append(
      codeButton('Copy', copyIcon.element({ tag: 'span' }), () => actions.copy(code)),
      codeButton('Insert into notebook', addIcon.element({ tag: 'span' }), () =>
        actions.insert(code)
      )
    );
    pre.before(bar);
  });
}

function codeButton(title: string, icon: HTMLElement, onClick: () => void): HTMLElement {
  const button = document.createElement('button');
  button.className = 'jp-Button jp-mod-minimal jp-AgenstraChat-codeButton';
  button.title = title;
  button.setAttribute('aria-label', title);
  button.append(icon);
  button.addEventListener('click', onClick);
  return button;
}
