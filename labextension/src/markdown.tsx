/**
 * Agent text rendered by JupyterLab's own markdown renderer, untrusted so its
 * sanitizer strips anything that could run; code blocks get copy and insert buttons.
 */

import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { addIcon, copyIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

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
    const renderer = rendermime.createRenderer(MARKDOWN);
    const model = new MimeModel({ data: { [MARKDOWN]: text }, trusted: false });
    let disposed = false;
    void renderer.renderModel(model).then(() => {
      if (!disposed && host.current) {
        addCodeButtons(renderer.node, actions);
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
