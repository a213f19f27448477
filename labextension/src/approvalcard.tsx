/** Permission cards and file diffs in the transcript. */

import { Button } from '@jupyterlab/ui-components';
import * as React from 'react';

import {
  expiresText,
  optionLabel,
  optionStyle,
  optionTitle,
  resolutionText
} from './approvals';
import { cachedLineDiff, DiffRow, diffRows } from './diff';
import { IFileDiff } from './protocol';
import { IPermissionCard } from './state';

/** The names of this page's user (see namesOf): a card they answered says "by you". */
export const CurrentUser = React.createContext<readonly string[]>([]);

/** The most rows a diff shows: the rest is counted, not drawn (a huge file stays usable). */
const MAX_ROWS = 400;

/** A file's change as +/− lines with a little unchanged context. */
export function DiffView({ diff }: { diff: IFileDiff }): JSX.Element {
  // By the texts, not the object: a re-render brings the same texts in a new object.
  const result = cachedLineDiff(diff.oldText, diff.newText);
  const rows = React.useMemo(() => diffRows(result.lines), [result]);
  const shown = rows.slice(0, MAX_ROWS);
  return (
    <div className="jp-AgenstraChat-diff" data-path={diff.path}>
      {result.whole && <div className="jp-AgenstraChat-diffNote">whole file replaced</div>}
      {!rows.length && <div className="jp-AgenstraChat-diffNote">no change</div>}
      <pre>
        {shown.map((row, index) => (
          <DiffLine key={index} row={row} />
        ))}
      </pre>
      {rows.length > MAX_ROWS && (
        <div className="jp-AgenstraChat-diffNote">… {rows.length - MAX_ROWS} more lines</div>
      )}
    </div>
  );
}

function DiffLine({ row }: { row: DiffRow }): JSX.Element {
  if ('skipped' in row) {
    return <div className="jp-AgenstraChat-diffSkip">⋯ {row.skipped} unchanged lines</div>;
  }
  const mod = row.op === '+' ? 'jp-mod-added' : row.op === '-' ? 'jp-mod-removed' : '';
  const sign = row.op === '+' ? '+' : row.op === '-' ? '−' : ' ';
  return (
    <div className={`jp-AgenstraChat-diffLine ${mod}`} data-op={row.op}>
      <span className="jp-AgenstraChat-diffSign" aria-hidden="true">{sign}</span>
      {row.text || ' '}
    </div>
  );
}

/** "path +n −m" */
function DiffTitle({ diff }: { diff: IFileDiff }): JSX.Element {
  const { added, removed } = cachedLineDiff(diff.oldText, diff.newText);
  return (
    <>
      <span className="jp-AgenstraChat-diffPath">{diff.path}</span>
      <span className="jp-AgenstraChat-diffCount">
        <span className="jp-mod-added">+{added}</span>{' '}
        <span className="jp-mod-removed">−{removed}</span>
      </span>
    </>
  );
}

/** A file's path with "+n −m"; the lines open on click. */
export function DiffDetails({ diff }: { diff: IFileDiff }): JSX.Element {
  return (
    <details className="jp-AgenstraChat-fileDiff">
      <summary>
        <DiffTitle diff={diff} />
      </summary>
      <DiffView diff={diff} />
    </details>
  );
}

/** A settled request, in one line. */
export function PermissionLine({ card }: { card: IPermissionCard }): JSX.Element {
  const resolved = card.resolved!;
  const title = card.request?.title ?? resolved.title;
  const me = React.useContext(CurrentUser);
  return (
    <div className="jp-AgenstraChat-permission jp-mod-resolved" data-request-id={card.requestId}
      data-outcome={resolved.outcome} data-by={resolved.by} data-user={resolved.user}>
      {resolutionText(resolved, title, me)}
    </div>
  );
}

/** Someone is writing: a text field holding text, or an editor (a notebook cell). */
function isTyping(): boolean {
  const active = document.activeElement as HTMLElement | null;
  if (!active) {
    return false;
  }
  if (active instanceof HTMLTextAreaElement || active instanceof HTMLInputElement) {
    return active.value !== ''; // the emptied composer after a send is not being typed in
  }
  return active.isContentEditable;
}

/** A request waiting for an answer: what the agent wants to do, and one button per option. */
export function PermissionCardView(props: {
  card: IPermissionCard;
  onRespond: (requestId: string, optionId: string) => void;
}): JSX.Element {
  const { card, onRespond } = props;
  const node = React.useRef<HTMLDivElement>(null);
  const [now, setNow] = React.useState(Date.now);
  React.useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  // Keyboard users land on the card, but whoever is typing keeps the focus.
  React.useEffect(() => {
    if (!isTyping()) {
      node.current?.focus({ preventScroll: true });
    }
  }, []);
  if (card.resolved) {
    return <PermissionLine card={card} />;
  }
  const request = card.request!;
  const waiting = card.sent !== undefined || card.answeredElsewhere;
  return (
    <div ref={node} className="jp-AgenstraChat-permission jp-mod-pending" tabIndex={-1}
      role="group" aria-label={`Permission request: ${request.title}`}
      data-request-id={card.requestId}>
      <div className="jp-AgenstraChat-permissionHead">
        <span className="jp-AgenstraChat-permissionKind">{request.kind}</span>
        <span className="jp-AgenstraChat-permissionTitle">{request.title}</span>
      </div>
      {!!request.paths?.length && (
        <ul className="jp-AgenstraChat-permissionPaths">
          {request.paths.map(path => <li key={path}><code>{path}</code></li>)}
        </ul>
      )}
      {(request.diff ?? []).map((diff, index) => (
        // Shown open and not focusable (its lines wrap, nothing scrolls): from the card, Tab
        // goes straight to the options.
        <div key={`${diff.path}-${index}`} className="jp-AgenstraChat-fileDiff">
          <div className="jp-AgenstraChat-diffTitle"><DiffTitle diff={diff} /></div>
          <DiffView diff={diff} />
        </div>
      ))}
      <div className="jp-AgenstraChat-permissionExpiry">{expiresText(request.expiresAt, now)}</div>
      {card.answeredElsewhere ? (
        <div className="jp-AgenstraChat-permissionState" role="status">
          Already answered — waiting for the outcome…
        </div>
      ) : (
        <div className="jp-AgenstraChat-permissionOptions">
          {request.options.map(option => (
            <Button key={option.optionId} small disabled={waiting}
              className={`jp-AgenstraChat-option jp-mod-${optionStyle(option.kind)}`}
              data-option-id={option.optionId} title={optionTitle(option)}
              onClick={() => onRespond(card.requestId, option.optionId)}>
              {optionLabel(option)}
            </Button>
          ))}
        </div>
      )}
      {card.sent !== undefined && (
        <div className="jp-AgenstraChat-permissionState" role="status">Sending…</div>
      )}
    </div>
  );
}
