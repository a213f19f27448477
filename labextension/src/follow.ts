/**
 * Keeps a scrolled view at its bottom while the user is there (new messages, streamed
 * text, markdown that renders late), and lets go once the user scrolls up.
 */

/** What the follower needs of a scrolling element. */
export interface IScrollable {
  scrollTop: number;
  readonly scrollHeight: number;
  readonly clientHeight: number;
}

/** How close to the bottom (px) still counts as at the bottom. */
export const BOTTOM_SLACK = 40;

export function atBottom(node: IScrollable): boolean {
  return node.scrollHeight - node.scrollTop - node.clientHeight < BOTTOM_SLACK;
}

export class Follower {
  constructor(
    private readonly _node: IScrollable,
    private readonly _onChange: (following: boolean) => void = () => undefined
  ) {}

  /** True while the view sticks to the bottom. */
  get following(): boolean {
    return this._following;
  }

  /**
   * A scroll happened. Only a move up lets go: growing content, the browser clamping a
   * shrunk view or our own scrolling never do. Reaching the bottom follows again.
   */
  scrolled(): void {
    const top = this._node.scrollTop;
    if (atBottom(this._node)) {
      this._set(true);
    } else if (top < this._lastTop) {
      this._set(false);
    }
    this._lastTop = top;
  }

  /** The content or the view changed size: back to the bottom while following. */
  resized(): void {
    if (this._following) {
      this._toBottom();
    }
  }

  /** "Jump to latest". */
  jump(): void {
    this._set(true);
    this._toBottom();
  }

  private _toBottom(): void {
    this._node.scrollTop = this._node.scrollHeight;
    this._lastTop = this._node.scrollTop;
  }

  private _set(following: boolean): void {
    if (following !== this._following) {
      this._following = following;
      this._onChange(following);
    }
  }

  private _following = true;
  private _lastTop = 0;
}
