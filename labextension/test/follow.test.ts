import { describe, expect, it } from 'vitest';

import { atBottom, Follower, IScrollable } from '../src/follow';

/** A scrolling element: the browser clamps scrollTop to what the content allows. */
class FakeView implements IScrollable {
  constructor(
    public scrollHeight: number,
    readonly clientHeight = 100
  ) {}

  get scrollTop(): number {
    return this._top;
  }

  set scrollTop(value: number) {
    this._top = Math.max(0, Math.min(value, this.scrollHeight - this.clientHeight));
  }

  private _top = 0;
}

function setUp(height = 100): { view: FakeView; follower: Follower; changes: boolean[] } {
  const view = new FakeView(height);
  const changes: boolean[] = [];
  const follower = new Follower(view, following => changes.push(following));
  return { view, follower, changes };
}

describe('Follower', () => {
  it('keeps the view at the bottom while content grows', () => {
    const { view, follower } = setUp();
    for (const height of [300, 800, 2000]) {
      view.scrollHeight = height; // a message, a streamed delta, markdown rendered late
      follower.resized();
      expect(atBottom(view)).toBe(true);
    }
    follower.scrolled(); // the scroll our own move causes
    expect(follower.following).toBe(true);
  });

  it('lets go when the user scrolls up, and keeps the position as more arrives', () => {
    const { view, follower, changes } = setUp(1000);
    follower.resized();
    view.scrollTop = 300; // the user scrolls up
    follower.scrolled();
    expect(follower.following).toBe(false);
    expect(changes).toEqual([false]); // the panel shows "Jump to latest"
    view.scrollHeight = 1500;
    follower.resized();
    expect(view.scrollTop).toBe(300);
  });

  it('follows again from "Jump to latest" or when the user scrolls back down', () => {
    const { view, follower, changes } = setUp(1000);
    follower.resized();
    view.scrollTop = 100;
    follower.scrolled();
    follower.jump();
    expect(atBottom(view)).toBe(true);
    expect(follower.following).toBe(true);
    view.scrollTop = 100;
    follower.scrolled();
    view.scrollTop = 895; // within the slack of the bottom
    follower.scrolled();
    expect(follower.following).toBe(true);
    expect(changes).toEqual([false, true, false, true]);
  });

  it('is not thrown off by scrolls it did not ask for that go down or clamp', () => {
    const { view, follower } = setUp(1000);
    follower.resized();
    view.scrollHeight = 3000; // grew, and before the resize is seen a scroll is reported
    view.scrollTop = 950;
    follower.scrolled();
    expect(follower.following).toBe(true);
    follower.resized();
    expect(atBottom(view)).toBe(true);
    view.scrollHeight = 400; // shrank (a live turn replaced by its stored answer)
    view.scrollTop = view.scrollTop; // the browser clamps
    follower.scrolled();
    expect(follower.following).toBe(true);
  });
});
