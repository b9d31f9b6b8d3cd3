import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AdaptiveDebouncer } from "../src/core/debounce.js";

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("AdaptiveDebouncer", () => {
  it("waits the base delay before anything is known", async () => {
    const debouncer = new AdaptiveDebouncer({ baseMs: 150 });
    let fired: boolean | null = null;
    void debouncer.wait().then((v) => (fired = v));
    await vi.advanceTimersByTimeAsync(149);
    expect(fired).toBeNull();
    await vi.advanceTimersByTimeAsync(1);
    expect(fired).toBe(true);
  });

  it("only the latest wait fires; older ones resolve false at once", async () => {
    const debouncer = new AdaptiveDebouncer({ baseMs: 100 });
    const first = debouncer.wait();
    await vi.advanceTimersByTimeAsync(50);
    const second = debouncer.wait();
    expect(await first).toBe(false);
    await vi.advanceTimersByTimeAsync(100);
    expect(await second).toBe(true);
  });

  it("an abort signal or cancel() ends the wait with false", async () => {
    const debouncer = new AdaptiveDebouncer({ baseMs: 100 });
    const abort = new AbortController();
    const waiting = debouncer.wait(abort.signal);
    abort.abort();
    expect(await waiting).toBe(false);
    const other = debouncer.wait();
    debouncer.cancel();
    expect(await other).toBe(false);
    const aborted = new AbortController();
    aborted.abort();
    expect(await debouncer.wait(aborted.signal)).toBe(false);
  });

  it("waits longer for a slow typist and less for a fast one, within the bounds", () => {
    const slow = new AdaptiveDebouncer({ baseMs: 150 });
    for (let t = 0; t <= 3000; t += 300) slow.noteTyping(t);
    expect(slow.delayMs()).toBe(Math.round((150 + 1.5 * 300) / 2)); // 300

    const fast = new AdaptiveDebouncer({ baseMs: 150 });
    for (let t = 0; t <= 1000; t += 40) fast.noteTyping(t);
    expect(fast.delayMs()).toBe(Math.round((150 + 1.5 * 40) / 2)); // 105

    const glacial = new AdaptiveDebouncer({ baseMs: 150 });
    for (let t = 0; t <= 10_000; t += 900) glacial.noteTyping(t);
    expect(glacial.delayMs()).toBe(600); // capped at base × 4
  });

  it("ignores long pauses when learning the typing rhythm", () => {
    const debouncer = new AdaptiveDebouncer({ baseMs: 100 });
    debouncer.noteTyping(0);
    debouncer.noteTyping(5000);
    expect(debouncer.delayMs()).toBe(100);
  });

  it("waits longer when completions are slow", () => {
    const debouncer = new AdaptiveDebouncer({ baseMs: 100 });
    debouncer.noteLatency(2000);
    expect(debouncer.delayMs()).toBe(300);
    debouncer.noteLatency(10_000);
    expect(debouncer.delayMs()).toBe(400); // capped at base × 4
  });

  it("honours explicit bounds and a zero base", () => {
    const bounded = new AdaptiveDebouncer({ baseMs: 100, minMs: 80, maxMs: 120 });
    bounded.noteLatency(5000);
    expect(bounded.delayMs()).toBe(120);
    for (let t = 0; t < 500; t += 10) bounded.noteTyping(t);
    bounded.configure({ baseMs: 100, minMs: 80, maxMs: 1000 });
    expect(bounded.delayMs()).toBeGreaterThanOrEqual(80);
    const off = new AdaptiveDebouncer({ baseMs: 0 });
    off.noteLatency(5000);
    expect(off.delayMs()).toBe(0);
  });

  it("refuses a negative base and inverted bounds", () => {
    expect(() => new AdaptiveDebouncer({ baseMs: -1 })).toThrow(/non-negative/);
    expect(() => new AdaptiveDebouncer({ baseMs: 100, minMs: 300, maxMs: 200 })).toThrow(/inverted/);
  });
});
