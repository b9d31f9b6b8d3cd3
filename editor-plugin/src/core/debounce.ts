/**
 * Adaptive debouncing of completion requests.
 *
 * A request fired in the middle of a word is wasted: the next keystroke cancels it, but the
 * server may already have spent a prefill on it. So the client waits for a pause, and what
 * counts as a pause depends on the typist (a fast typist's 150 ms gap is a pause, a slow
 * typist's is not) and on the server (a slow model makes each wasted request dearer). The
 * delay is half the configured base and half 1.5 × the typical gap between keystrokes, plus a
 * tenth of the typical completion latency, kept within [base / 2, base × 4].
 */

export interface DebounceOptions {
  /** The configured delay, used as is until typing and latency have been observed. */
  baseMs: number;
  /** Lower bound; default base / 2. */
  minMs?: number;
  /** Upper bound; default base × 4. */
  maxMs?: number;
  now?: () => number;
}

/** Gaps longer than this are thinking, not typing, and say nothing about typing speed. */
const TYPING_GAP_LIMIT_MS = 1_000;
/** Weight of the newest sample in the moving averages. */
const SMOOTHING = 0.3;

export class AdaptiveDebouncer {
  private baseMs = 0;
  private minMs = 0;
  private maxMs = 0;
  private readonly now: () => number;
  private lastKeystroke: number | null = null;
  private typingGapMs: number | null = null;
  private latencyMs: number | null = null;
  private waiting: { timer: ReturnType<typeof setTimeout>; finish(elapsed: boolean): void } | null = null;

  constructor(options: DebounceOptions) {
    this.now = options.now ?? Date.now;
    this.configure(options);
  }

  /** Change the base delay (and bounds) while keeping what was learnt about the user. */
  configure(options: Pick<DebounceOptions, "baseMs" | "minMs" | "maxMs">): void {
    if (!Number.isFinite(options.baseMs) || options.baseMs < 0) {
      throw new RangeError(`debounce base delay must be a non-negative number of ms, got ${options.baseMs}`);
    }
    this.baseMs = options.baseMs;
    this.minMs = options.minMs ?? options.baseMs / 2;
    this.maxMs = options.maxMs ?? options.baseMs * 4;
    if (this.minMs > this.maxMs) {
      throw new RangeError(`debounce bounds are inverted: min ${this.minMs} ms > max ${this.maxMs} ms`);
    }
  }

  /** Record a keystroke (any document change) to learn the user's typing rhythm. */
  noteTyping(at: number = this.now()): void {
    if (this.lastKeystroke !== null) {
      const gap = at - this.lastKeystroke;
      if (gap >= 0 && gap <= TYPING_GAP_LIMIT_MS) this.typingGapMs = smooth(this.typingGapMs, gap);
    }
    this.lastKeystroke = at;
  }

  /** Record how long a completion took, end to end. */
  noteLatency(ms: number): void {
    if (Number.isFinite(ms) && ms >= 0) this.latencyMs = smooth(this.latencyMs, ms);
  }

  /** The delay the next {@link wait} will use. */
  delayMs(): number {
    const rhythm = this.typingGapMs === null ? this.baseMs : (this.baseMs + 1.5 * this.typingGapMs) / 2;
    const cost = this.latencyMs === null ? 0 : 0.1 * this.latencyMs;
    return Math.round(Math.min(this.maxMs, Math.max(this.minMs, rhythm + cost)));
  }

  /**
   * Resolve true after the current delay, or false as soon as `signal` aborts, {@link cancel}
   * is called, or a newer wait starts (only the latest wait may fire).
   */
  wait(signal?: AbortSignal): Promise<boolean> {
    this.cancel();
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const onAbort = (): void => this.cancel();
      const entry = {
        timer: setTimeout(() => entry.finish(true), this.delayMs()),
        finish: (elapsed: boolean): void => {
          clearTimeout(entry.timer);
          signal?.removeEventListener("abort", onAbort);
          if (this.waiting === entry) this.waiting = null;
          resolve(elapsed);
        },
      };
      this.waiting = entry;
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** End the pending wait, if any, with false. */
  cancel(): void {
    this.waiting?.finish(false);
  }
}

function smooth(average: number | null, sample: number): number {
  return average === null ? sample : average + SMOOTHING * (sample - average);
}
