/**
 * Completion telemetry: whether suggestions are seen, taken or passed over.
 *
 * Events go to the server's `POST /v1/events` (`{type, completion_id, choice_index?,
 * elapsed_ms?}`), the same host as the WebSocket. They are queued and sent in small bursts
 * after a short delay, one request at a time, so typing never waits on them; a failed send is
 * logged once per failure streak and dropped. Nothing here throws into the editor.
 */

export type TelemetryEventType = "view" | "select" | "dismiss";

export interface TelemetryEvent {
  type: TelemetryEventType;
  /** The WebSocket completion's `requestId`. */
  completion_id: string;
  choice_index?: number;
  /** For select and dismiss: how long the suggestion was on screen. */
  elapsed_ms?: number;
}

/** The part of `fetch` used here; both Node's and the browser's fit. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body: string; keepalive?: boolean },
) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;

export interface TelemetryOptions {
  /** `http://host:port`, see {@link restBaseUrl}. */
  baseUrl: string;
  apiKey?: string;
  fetch?: FetchLike;
  /** How long events gather before a burst is sent. */
  flushDelayMs?: number;
  /** Oldest events are dropped beyond this many waiting (a server that is away for long). */
  maxQueue?: number;
  log?: (level: "warn" | "info", message: string) => void;
}

/** How many completion ids are remembered to send a `view` only once per completion. */
const VIEWED_MEMORY = 256;

/** The REST base that serves a WebSocket URL: ws://h:p/x/v1/documents → http://h:p/x. */
export function restBaseUrl(wsUrl: string): string {
  const url = new URL(wsUrl);
  const protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  const path = url.pathname.replace(/\/v1\/documents\/?$/, "").replace(/\/$/, "");
  return `${protocol}//${url.host}${path}`;
}

export class TelemetryReporter {
  private readonly options: TelemetryOptions;
  private baseUrl: string;
  private apiKey: string;
  private readonly queue: TelemetryEvent[] = [];
  private readonly viewed: string[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private flushing: Promise<void> | null = null;
  private failing = false;
  private dropped = 0;

  constructor(options: TelemetryOptions) {
    this.options = options;
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.apiKey = options.apiKey ?? "";
  }

  setEndpoint(baseUrl: string, apiKey = ""): void {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.apiKey = apiKey;
  }

  /** A suggestion was shown; repeated views of the same completion are sent once. */
  view(completionId: string, choiceIndex = 0): void {
    if (this.viewed.includes(completionId)) return;
    this.viewed.push(completionId);
    if (this.viewed.length > VIEWED_MEMORY) this.viewed.shift();
    this.record({ type: "view", completion_id: completionId, choice_index: choiceIndex });
  }

  select(completionId: string, elapsedMs?: number, choiceIndex = 0): void {
    this.record(withElapsed({ type: "select", completion_id: completionId, choice_index: choiceIndex }, elapsedMs));
  }

  dismiss(completionId: string, elapsedMs?: number, choiceIndex = 0): void {
    this.record(withElapsed({ type: "dismiss", completion_id: completionId, choice_index: choiceIndex }, elapsedMs));
  }

  record(event: TelemetryEvent): void {
    this.queue.push(event);
    const max = this.options.maxQueue ?? 100;
    while (this.queue.length > max) {
      this.queue.shift();
      this.dropped += 1;
    }
    if (this.timer === null && this.flushing === null) {
      this.timer = setTimeout(() => void this.flush(), this.options.flushDelayMs ?? 1_000);
    }
  }

  /** Send everything queued now; resolves when the queue is empty (never rejects). */
  flush(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.flushing ??= this.drain().finally(() => {
      this.flushing = null;
      if (this.queue.length > 0) void this.flush(); // recorded while the last request was out
    });
    return this.flushing;
  }

  /** Send what is left; call when the host shuts down. */
  async dispose(): Promise<void> {
    await this.flush();
  }

  private async drain(): Promise<void> {
    const send = this.options.fetch ?? (globalThis.fetch as unknown as FetchLike | undefined);
    if (!send) {
      this.warn("no fetch() in this runtime; telemetry is off");
      this.queue.length = 0;
      return;
    }
    if (this.dropped > 0) {
      this.warn(`dropped ${this.dropped} telemetry event(s): more than ${this.options.maxQueue ?? 100} waited`);
      this.dropped = 0;
    }
    for (let event = this.queue.shift(); event !== undefined; event = this.queue.shift()) {
      const headers: Record<string, string> = { "Content-Type": "application/json" };
      if (this.apiKey) headers["Authorization"] = `Bearer ${this.apiKey}`;
      try {
        const response = await send(`${this.baseUrl}/v1/events`, {
          method: "POST",
          headers,
          body: JSON.stringify(event),
          keepalive: true,
        });
        if (!response.ok) {
          const body = await response.text().catch(() => "");
          this.warn(`POST ${this.baseUrl}/v1/events answered ${response.status}: ${body.slice(0, 200)}`);
          continue;
        }
        if (this.failing) this.options.log?.("info", "telemetry is reaching the server again");
        this.failing = false;
      } catch (err) {
        this.warn(`POST ${this.baseUrl}/v1/events failed: ${(err as Error).message}`);
      }
    }
  }

  /** Log the first failure of a streak only: a server that is down must not flood the log. */
  private warn(message: string): void {
    if (!this.failing) this.options.log?.("warn", message);
    this.failing = true;
  }
}

function withElapsed(event: TelemetryEvent, elapsedMs: number | undefined): TelemetryEvent {
  return elapsedMs === undefined ? event : { ...event, elapsed_ms: Math.max(0, Math.round(elapsedMs)) };
}
