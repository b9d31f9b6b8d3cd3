/**
 * SpliceClient: one WebSocket connection to `WS /v1/documents`, shared by every open document.
 *
 * The host (the VS Code extension, the browser playground) tells the client which documents are
 * open and what changed; the client keeps the server's copy in step (open / change / close,
 * answering `resync` with the full text), reconnects with capped exponential backoff and
 * re-opens everything after a reconnect, and turns `complete` round trips into promises where
 * the latest request per document wins. It knows nothing about editors: text comes from the
 * host's `getText()` callback and the socket from the host's factory, so the same code runs in
 * Node (with the `ws` package) and in a browser (native WebSocket), and tests drive it with an
 * in-memory socket.
 */

import { CancelledError, SpliceError } from "./errors.js";
import { firstDifference } from "./positions.js";
import {
  parseServerMessage,
  ProtocolError,
  type ClientMessage,
  type CompletionMessage,
  type DocumentMessage,
  type ErrorMessage,
  type NextEditResultMessage,
  type Position,
  type ServerMessage,
  type TextChange,
} from "./protocol.js";

// -- the socket seam ---------------------------------------------------------------------------

export interface SocketMessageEvent {
  data: unknown;
}
export interface SocketCloseEvent {
  code: number;
  reason: string;
}
/** `ws` puts the cause in `message`; a browser's error event carries no detail at all. */
export interface SocketErrorEvent {
  message?: string;
}

/**
 * The part of a WebSocket the client uses. Both the DOM `WebSocket` and the `ws` package's
 * satisfy it as they are. The handlers take `never` only so that both libraries' own event types
 * fit; the client reads just the fields of the Socket*Event types above.
 */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Opens a socket. `headers` carries `Authorization` for factories that can set headers (`ws`). */
export type WebSocketFactory = (url: string, headers: Record<string, string>) => WebSocketLike;

const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const UNAUTHORIZED_CLOSE = 4401; // the server's close code for a bad or missing API key

// -- public types ------------------------------------------------------------------------------

/** What the client needs to know about an open document; the host owns the text. */
export interface DocumentSource {
  readonly uri: string;
  readonly languageId: string;
  /** The document's full current text; read on open, on `resync` and after a reconnect. */
  getText(): string;
}

export interface ReconnectOptions {
  initialDelayMs: number;
  maxDelayMs: number;
  factor: number;
  /** 0..1: each delay is drawn from [delay × (1 − jitter), delay], so clients spread out. */
  jitter: number;
  /** A connection that lived this long resets the backoff; shorter ones keep growing it. */
  stableAfterMs: number;
}

export type LogLevel = "debug" | "info" | "warn" | "error";

export interface SpliceClientOptions {
  /** `ws://host:port/v1/documents` or `wss://...`. */
  url: string;
  apiKey?: string;
  /** `header`: `Authorization: Bearer` (Node, `ws`); `query`: `?api_key=` (browsers cannot set headers). */
  apiKeyTransport?: "header" | "query";
  createSocket: WebSocketFactory;
  reconnect?: Partial<ReconnectOptions>;
  /** Keepalive ping period; 0 turns keepalive off. */
  pingIntervalMs?: number;
  /** A ping unanswered this long means the connection is dead: it is dropped and re-made. */
  pongTimeoutMs?: number;
  /** A completion or `get` unanswered this long is cancelled and rejected with `timeout`. */
  requestTimeoutMs?: number;
  random?: () => number;
  now?: () => number;
  log?: (level: LogLevel, message: string) => void;
}

export interface CompleteOptions {
  maxTokens?: number;
  temperature?: number;
}

export interface CompletionResult {
  requestId: string;
  uri: string;
  /** The document version the suggestion was made for (the client's current one). */
  version: number;
  items: CompletionMessage["items"];
  finishReason?: string;
  usage?: CompletionMessage["usage"];
  timings?: CompletionMessage["timings"];
  /** Round trip from sending `complete` to receiving the answer. */
  latencyMs: number;
}

export interface NextEditOptions {
  /** Window lines above and below the cursor's line (0..20 each; the server's default is 5). */
  linesBefore?: number;
  linesAfter?: number;
  maxTokens?: number;
}

export interface NextEditResult {
  requestId: string;
  uri: string;
  /** The document version the edits apply to (the client's current one). */
  version: number;
  window: NextEditResultMessage["window"];
  /** Empty when the model suggests no change. */
  edits: NextEditResultMessage["edits"];
  finishReason?: string;
  usage?: NextEditResultMessage["usage"];
  timings?: NextEditResultMessage["timings"];
  /** Round trip from sending `nextEdit` to receiving the answer. */
  latencyMs: number;
}

export interface SyncReport {
  uri: string;
  inSync: boolean;
  clientVersion: number;
  serverVersion: number;
  /** Where the server's copy first departs from the editor's text (null when in sync). */
  firstDifference: Position | null;
}

export type ConnectionState = "stopped" | "connecting" | "connected" | "reconnecting" | "unauthorized";

export interface ClientStatus {
  connection: ConnectionState;
  url: string;
  /** A completion is in flight. */
  busy: boolean;
  /** Round trip of the last keepalive ping. */
  pingMs: number | null;
  /** Round trip of the last completion. */
  completionMs: number | null;
  /** The last problem worth telling the user; cleared by a connection or a completion that works. */
  error: { code: string; message: string } | null;
  /** When the next connection attempt starts (the `now()` clock), while reconnecting. */
  retryAt: number | null;
}

const DEFAULT_RECONNECT: ReconnectOptions = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  factor: 2,
  jitter: 0.5,
  stableAfterMs: 5_000,
};

/** Errors about a document the server will not hold; changes for it stop until it is re-opened. */
const DOCUMENT_REFUSALS = new Set(["too_many_documents", "document_too_large", "message_too_large"]);
/** Sync hiccups that a `resync` already repairs; not worth an error in the status bar. */
const TRANSIENT = new Set(["resync_pending", "version_mismatch"]);

interface TrackedDocument {
  source: DocumentSource;
  version: number;
  /** Set when the server refused the document; cleared by re-opening or reconnecting. */
  refused: SpliceError | null;
}

type RequestKind = "complete" | "nextEdit";

interface PendingCompletion {
  uri: string;
  kind: RequestKind;
  sentAt: number;
  resolve(result: CompletionResult | NextEditResult): void; // by `kind`
  reject(err: Error): void;
  /** Removes the timer and the abort listener. */
  cleanup(): void;
}

interface PendingGet {
  resolve(doc: DocumentMessage): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export function validateServerUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new SpliceError("invalid_url", `"${url}" is not a URL; expected ws://host:port/v1/documents`);
  }
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new SpliceError(
      "invalid_url",
      `"${url}" must start with ws:// or wss:// (the editor protocol is a WebSocket), e.g. ws://127.0.0.1:8600/v1/documents`,
    );
  }
}

export class SpliceClient {
  private url: string;
  private apiKey: string;
  private readonly options: SpliceClientOptions;
  private readonly reconnect: ReconnectOptions;
  private readonly now: () => number;
  private readonly random: () => number;

  private readonly documents = new Map<string, TrackedDocument>();
  private readonly pending = new Map<string, PendingCompletion>();
  private readonly latestByUri = new Map<string, string>();
  private readonly gets = new Map<string, PendingGet[]>();
  private readonly listeners = new Set<(status: ClientStatus) => void>();

  private socket: WebSocketLike | null = null;
  private running = false;
  private attempts = 0;
  private openedAt: number | null = null;
  private lastSocketError: string | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private pingId: string | null = null;
  private pingSentAt = 0;
  private seq = 0;
  private readonly idPrefix: string;
  private current: ClientStatus;

  constructor(options: SpliceClientOptions) {
    validateServerUrl(options.url);
    this.options = options;
    this.url = options.url;
    this.apiKey = options.apiKey ?? "";
    this.reconnect = { ...DEFAULT_RECONNECT, ...options.reconnect };
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    // Request ids double as telemetry completion ids, so they must not repeat across clients.
    this.idPrefix = Math.floor(this.random() * 36 ** 8).toString(36).padStart(8, "0");
    this.current = {
      connection: "stopped",
      url: this.url,
      busy: false,
      pingMs: null,
      completionMs: null,
      error: null,
      retryAt: null,
    };
  }

  // -- lifecycle ---------------------------------------------------------------------------------

  get status(): ClientStatus {
    return this.current;
  }

  /** Subscribe to status changes; returns the unsubscribe function. */
  onStatus(listener: (status: ClientStatus) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Connect (and keep reconnecting) until {@link stop}. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.attempts = 0;
    this.connect();
  }

  /** Disconnect and stay disconnected; documents stay tracked and are re-opened by {@link start}. */
  stop(): void {
    this.running = false;
    this.clearReconnect();
    this.detachSocket();
    this.stopKeepalive();
    this.rejectAll(new CancelledError("the Splice client was stopped"));
    this.setStatus({ connection: "stopped", retryAt: null, error: null });
  }

  /** Stop and forget every document and listener. */
  dispose(): void {
    this.stop();
    this.documents.clear();
    this.listeners.clear();
  }

  /** Point the client at another server or key; reconnects at once when running. */
  setEndpoint(url: string, apiKey = ""): void {
    validateServerUrl(url);
    if (url === this.url && apiKey === this.apiKey) return;
    this.url = url;
    this.apiKey = apiKey;
    this.setStatus({ url, error: null });
    if (this.running) {
      this.clearReconnect();
      this.detachSocket();
      this.stopKeepalive();
      this.rejectAll(new SpliceError("disconnected", "the server URL or API key changed"));
      this.attempts = 0;
      this.connect();
    }
  }

  // -- documents ---------------------------------------------------------------------------------

  isOpen(uri: string): boolean {
    return this.documents.has(uri);
  }

  /** Start tracking a document (or replace one with the same uri) and send its text. */
  openDocument(source: DocumentSource): void {
    const known = this.documents.get(source.uri);
    const doc: TrackedDocument = { source, version: known ? known.version + 1 : 1, refused: null };
    this.documents.set(source.uri, doc);
    this.sendOpen(doc);
  }

  /**
   * Send edits, in the order the editor applied them (each against the text the previous one
   * left). While disconnected nothing is sent: the reconnect re-opens the document in full.
   */
  changeDocument(uri: string, changes: readonly TextChange[]): void {
    const doc = this.documents.get(uri);
    if (!doc) throw new Error(`Splice: changeDocument(${uri}) before openDocument; the host must open it first`);
    if (changes.length === 0) return;
    doc.version += 1;
    if (doc.refused) return;
    this.send({ type: "change", uri, version: doc.version, changes: [...changes] });
  }

  closeDocument(uri: string): void {
    if (!this.documents.delete(uri)) return;
    for (const kind of ["complete", "nextEdit"] as const) {
      const id = this.latestByUri.get(latestKey(kind, uri));
      if (id !== undefined) this.settle(id)?.reject(new CancelledError(`document ${uri} was closed`));
    }
    this.send({ type: "close", uri });
  }

  // -- requests ----------------------------------------------------------------------------------

  /**
   * Ask for a completion at `position`. A newer call for the same document cancels this one
   * (the promise rejects with CancelledError, as it does on `signal` abort, where the server is
   * told with `cancel`); a result for a document that changed meanwhile is dropped the same way.
   */
  complete(
    uri: string,
    position: Position,
    options: CompleteOptions = {},
    signal?: AbortSignal,
  ): Promise<CompletionResult> {
    return this.request<CompletionResult>("complete", uri, signal, (requestId, version) => ({
      type: "complete",
      uri,
      position,
      requestId,
      version,
      ...(options.maxTokens !== undefined && { maxTokens: options.maxTokens }),
      ...(options.temperature !== undefined && { temperature: options.temperature }),
    }));
  }

  /**
   * Ask for a next-edit suggestion around `position` (edits that follow from the ones just made).
   * Superseded by a newer `nextEdit` for the same document (not by completions), cancelled by
   * `signal`, and dropped when the document changes before the answer, as `complete` is.
   */
  nextEdit(
    uri: string,
    position: Position,
    options: NextEditOptions = {},
    signal?: AbortSignal,
  ): Promise<NextEditResult> {
    return this.request<NextEditResult>("nextEdit", uri, signal, (requestId, version) => ({
      type: "nextEdit",
      uri,
      position,
      requestId,
      version,
      ...(options.linesBefore !== undefined && { linesBefore: options.linesBefore }),
      ...(options.linesAfter !== undefined && { linesAfter: options.linesAfter }),
      ...(options.maxTokens !== undefined && { maxTokens: options.maxTokens }),
    }));
  }

  private request<T extends CompletionResult | NextEditResult>(
    kind: RequestKind,
    uri: string,
    signal: AbortSignal | undefined,
    message: (requestId: string, version: number) => ClientMessage,
  ): Promise<T> {
    if (signal?.aborted) return Promise.reject(new CancelledError("cancelled before it was sent"));
    const doc = this.documents.get(uri);
    if (!doc) return Promise.reject(new SpliceError("not_open", `document ${uri} is not open in the Splice client`));
    if (doc.refused) return Promise.reject(doc.refused);
    if (!this.isConnected()) return Promise.reject(this.disconnectedError());

    const slot = latestKey(kind, uri);
    const older = this.latestByUri.get(slot);
    if (older !== undefined) this.settle(older)?.reject(new CancelledError("superseded by a newer request"));

    const requestId = `${this.idPrefix}-${++this.seq}`;
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = this.options.requestTimeoutMs ?? 60_000;
      const timer = setTimeout(() => {
        if (!this.settle(requestId)) return;
        this.send({ type: "cancel", requestId });
        const what = kind === "complete" ? "completion" : "next-edit suggestion";
        const err = new SpliceError("timeout", `no ${what} from ${this.url} within ${timeoutMs} ms`);
        this.setStatus({ error: { code: err.code, message: err.message } });
        reject(err);
      }, timeoutMs);
      const onAbort = (): void => {
        if (!this.settle(requestId)) return;
        this.send({ type: "cancel", requestId });
        reject(new CancelledError("cancelled by the editor"));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(requestId, {
        uri,
        kind,
        sentAt: this.now(),
        resolve: resolve as (result: CompletionResult | NextEditResult) => void,
        reject,
        cleanup: () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        },
      });
      this.latestByUri.set(slot, requestId);
      this.setStatus({ busy: true });
      this.send(message(requestId, doc.version));
    });
  }

  /** The server's copy of a document (the debug `get` message). */
  get(uri: string): Promise<DocumentMessage> {
    if (!this.documents.has(uri)) {
      return Promise.reject(new SpliceError("not_open", `document ${uri} is not open in the Splice client`));
    }
    if (!this.isConnected()) return Promise.reject(this.disconnectedError());
    return new Promise<DocumentMessage>((resolve, reject) => {
      const timeoutMs = this.options.requestTimeoutMs ?? 60_000;
      const entry: PendingGet = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.removeGet(uri, entry);
          reject(new SpliceError("timeout", `no answer to "get ${uri}" within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      const queue = this.gets.get(uri) ?? [];
      queue.push(entry);
      this.gets.set(uri, queue);
      this.send({ type: "get", uri });
    });
  }

  /** Compare the server's copy of a document with the editor's text. */
  async compareWithServer(uri: string): Promise<SyncReport> {
    const server = await this.get(uri);
    const doc = this.documents.get(uri);
    if (!doc) throw new SpliceError("not_open", `document ${uri} was closed while comparing`);
    const text = doc.source.getText();
    return {
      uri,
      inSync: server.text === text && server.version === doc.version,
      clientVersion: doc.version,
      serverVersion: server.version,
      firstDifference: firstDifference(text, server.text),
    };
  }

  // -- connection --------------------------------------------------------------------------------

  private isConnected(): boolean {
    return this.socket !== null && this.socket.readyState === OPEN && this.current.connection === "connected";
  }

  private disconnectedError(): SpliceError {
    const why = this.current.error ? `: ${this.current.error.message}` : "";
    return new SpliceError("disconnected", `not connected to ${this.url}${why}`);
  }

  private socketUrl(): string {
    if (!this.apiKey || this.options.apiKeyTransport !== "query") return this.url;
    const url = new URL(this.url);
    url.searchParams.set("api_key", this.apiKey);
    return url.toString();
  }

  private connect(): void {
    this.reconnectTimer = null;
    this.setStatus({ connection: this.attempts === 0 ? "connecting" : "reconnecting", retryAt: null });
    const headers: Record<string, string> =
      this.apiKey && this.options.apiKeyTransport !== "query" ? { Authorization: `Bearer ${this.apiKey}` } : {};
    let socket: WebSocketLike;
    try {
      socket = this.options.createSocket(this.socketUrl(), headers);
    } catch (err) {
      this.lastSocketError = (err as Error).message;
      this.onClosed(1006, "");
      return;
    }
    this.socket = socket;
    this.openedAt = null;
    this.lastSocketError = null;
    socket.onopen = () => {
      if (this.socket === socket) this.onOpened();
    };
    socket.onmessage = (event: SocketMessageEvent) => {
      if (this.socket === socket) this.onFrame(event.data);
    };
    socket.onerror = (event: SocketErrorEvent) => {
      if (this.socket === socket && event?.message) this.lastSocketError = event.message;
    };
    socket.onclose = (event: SocketCloseEvent) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.onClosed(event.code, event.reason);
    };
  }

  private onOpened(): void {
    this.openedAt = this.now();
    this.log("info", `connected to ${this.url}`);
    this.setStatus({ connection: "connected", error: null, retryAt: null });
    for (const doc of this.documents.values()) {
      doc.refused = null;
      this.sendOpen(doc);
    }
    this.startKeepalive();
  }

  private onClosed(code: number, reason: string): void {
    this.stopKeepalive();
    const stable = this.openedAt !== null && this.now() - this.openedAt >= this.reconnect.stableAfterMs;
    const wasOpen = this.openedAt !== null;
    this.openedAt = null;
    const lost = new SpliceError("disconnected", `the connection to ${this.url} closed`);
    this.rejectAll(lost);
    if (!this.running) return;
    if (code === UNAUTHORIZED_CLOSE) {
      // Retrying cannot help until the key changes (setEndpoint reconnects then).
      const message = this.current.error?.code === "unauthorized" ? this.current.error.message : reason;
      this.setStatus({
        connection: "unauthorized",
        busy: false,
        retryAt: null,
        error: { code: "unauthorized", message: `${this.url} refused the API key: ${message || "unauthorized"}` },
      });
      return;
    }
    if (stable) this.attempts = 0;
    const delay = this.backoffDelay(this.attempts);
    this.attempts += 1;
    const cause =
      this.lastSocketError ?? (wasOpen ? `connection closed (code ${code}${reason ? `, ${reason}` : ""})` : `could not connect (code ${code})`);
    const message = `${cause}; retrying in ${(delay / 1000).toFixed(1)} s`;
    this.log(wasOpen ? "warn" : "info", `${this.url}: ${message}`);
    this.setStatus({
      connection: "reconnecting",
      busy: false,
      retryAt: this.now() + delay,
      error: { code: "disconnected", message: `${this.url}: ${message}` },
    });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Capped exponential backoff with jitter: attempt n waits about initial × factor^n. */
  private backoffDelay(attempt: number): number {
    const { initialDelayMs, maxDelayMs, factor, jitter } = this.reconnect;
    const ceiling = Math.min(maxDelayMs, initialDelayMs * factor ** attempt);
    return Math.round(ceiling * (1 - jitter * this.random()));
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  /** Close the socket without waiting for its close event; nothing it still delivers is heard. */
  private detachSocket(): void {
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
    try {
      socket.close(1000, "client closing");
    } catch {
      // A socket that is still connecting may refuse to close; it is detached either way.
    }
  }

  private rejectAll(reason: Error): void {
    for (const id of [...this.pending.keys()]) this.settle(id)?.reject(reason);
    for (const [uri, queue] of this.gets) {
      for (const entry of queue) {
        clearTimeout(entry.timer);
        entry.reject(reason);
      }
      this.gets.delete(uri);
    }
  }

  // -- keepalive ---------------------------------------------------------------------------------

  private startKeepalive(): void {
    const interval = this.options.pingIntervalMs ?? 15_000;
    if (interval <= 0) return;
    this.sendPing();
    this.pingTimer = setInterval(() => this.sendPing(), interval);
  }

  private stopKeepalive(): void {
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    if (this.pongTimer !== null) clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
    this.pingId = null;
  }

  private sendPing(): void {
    if (this.pingId !== null) return; // the previous ping is still out; its timeout decides
    this.pingId = `ping-${++this.seq}`;
    this.pingSentAt = this.now();
    this.send({ type: "ping", id: this.pingId });
    const timeoutMs = this.options.pongTimeoutMs ?? 10_000;
    this.pongTimer = setTimeout(() => {
      this.log("warn", `${this.url}: no pong within ${timeoutMs} ms; reconnecting`);
      this.detachSocket();
      this.lastSocketError = `the server did not answer a ping within ${timeoutMs} ms`;
      this.onClosed(1006, "pong timeout");
    }, timeoutMs);
  }

  // -- incoming ----------------------------------------------------------------------------------

  private onFrame(data: unknown): void {
    if (typeof data !== "string") {
      this.log("warn", `ignored a binary frame from ${this.url}; the protocol is JSON text`);
      return;
    }
    let message: ServerMessage;
    try {
      message = parseServerMessage(data);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.log("warn", err.message);
      return;
    }
    switch (message.type) {
      case "completion":
        return this.onCompletion(message);
      case "nextEditResult":
        return this.onNextEdit(message);
      case "error":
        return this.onError(message);
      case "resync": {
        const doc = this.documents.get(message.uri);
        if (!doc) return; // closed meanwhile; its `close` is on the way
        this.log(
          "info",
          `resync ${message.uri} (${message.reason}${message.message ? `: ${message.message}` : ""}); sending the full text`,
        );
        this.sendOpen(doc);
        return;
      }
      case "document": {
        const entry = this.gets.get(message.uri)?.shift();
        if (entry) {
          clearTimeout(entry.timer);
          entry.resolve(message);
        }
        return;
      }
      case "pong":
        if (message.id !== undefined && String(message.id) === this.pingId) {
          if (this.pongTimer !== null) clearTimeout(this.pongTimer);
          this.pongTimer = null;
          this.pingId = null;
          this.setStatus({ pingMs: this.now() - this.pingSentAt });
        }
        return;
    }
  }

  private onCompletion(message: CompletionMessage): void {
    const pending = this.settle(message.requestId);
    if (!pending) return; // superseded, aborted or timed out: nobody waits for it
    const latencyMs = this.now() - pending.sentAt;
    const doc = this.documents.get(message.uri);
    if (!doc || doc.version !== message.version) {
      pending.reject(new CancelledError(`the document changed after the request (version ${message.version})`));
      return;
    }
    this.setStatus({ completionMs: latencyMs, error: null });
    pending.resolve({
      requestId: message.requestId,
      uri: message.uri,
      version: message.version,
      items: message.items,
      latencyMs,
      ...(message.finishReason !== undefined && { finishReason: message.finishReason }),
      ...(message.usage !== undefined && { usage: message.usage }),
      ...(message.timings !== undefined && { timings: message.timings }),
    });
  }

  private onNextEdit(message: NextEditResultMessage): void {
    const pending = this.settle(message.requestId);
    if (!pending) return;
    const latencyMs = this.now() - pending.sentAt;
    const doc = this.documents.get(message.uri);
    if (!doc || doc.version !== message.version) {
      pending.reject(new CancelledError(`the document changed after the request (version ${message.version})`));
      return;
    }
    this.setStatus({ error: null });
    const result: NextEditResult = {
      requestId: message.requestId,
      uri: message.uri,
      version: message.version,
      window: message.window,
      edits: message.edits,
      latencyMs,
      ...(message.finishReason !== undefined && { finishReason: message.finishReason }),
      ...(message.usage !== undefined && { usage: message.usage }),
      ...(message.timings !== undefined && { timings: message.timings }),
    };
    pending.resolve(result);
  }

  private onError(message: ErrorMessage): void {
    const { code } = message;
    const text = message.uri ? `${message.message} (${message.uri})` : message.message;
    if (message.requestId !== undefined) {
      const pending = this.settle(String(message.requestId));
      if (pending) {
        if (code === "cancelled") {
          pending.reject(new CancelledError(message.message));
          return;
        }
        if (!TRANSIENT.has(code)) this.setStatus({ error: { code, message: text } });
        pending.reject(new SpliceError(code, message.message));
        return;
      }
      if (code === "cancelled") return; // the answer to a cancel or supersede we already settled
    }
    if (message.uri !== undefined) {
      const doc = this.documents.get(message.uri);
      if (doc && DOCUMENT_REFUSALS.has(code)) {
        doc.refused = new SpliceError(code, `the server refused ${message.uri}: ${message.message}`);
      }
      if (code === "unknown_document") {
        for (const entry of this.gets.get(message.uri) ?? []) {
          clearTimeout(entry.timer);
          entry.reject(new SpliceError(code, message.message));
        }
        this.gets.delete(message.uri);
      }
    }
    this.log(code === "unauthorized" ? "error" : "warn", `server error ${code}: ${text}`);
    this.setStatus({ error: { code, message: text } });
  }

  // -- outgoing ----------------------------------------------------------------------------------

  private sendOpen(doc: TrackedDocument): void {
    this.send({
      type: "open",
      uri: doc.source.uri,
      languageId: doc.source.languageId,
      version: doc.version,
      text: doc.source.getText(),
    });
  }

  /** Send when connected; otherwise drop the message (a reconnect re-sends every document whole). */
  private send(message: ClientMessage): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  /** Take a completion out of the books (timer, abort listener, latest-wins slot); null when already settled. */
  private settle(requestId: string): PendingCompletion | null {
    const pending = this.pending.get(requestId);
    if (!pending) return null;
    this.pending.delete(requestId);
    pending.cleanup();
    const slot = latestKey(pending.kind, pending.uri);
    if (this.latestByUri.get(slot) === requestId) this.latestByUri.delete(slot);
    if (this.pending.size === 0) this.setStatus({ busy: false });
    return pending;
  }

  private removeGet(uri: string, entry: PendingGet): void {
    const queue = this.gets.get(uri);
    if (!queue) return;
    const index = queue.indexOf(entry);
    if (index >= 0) queue.splice(index, 1);
    if (queue.length === 0) this.gets.delete(uri);
  }

  private setStatus(patch: Partial<ClientStatus>): void {
    const next = { ...this.current, ...patch };
    const changed = (Object.keys(patch) as (keyof ClientStatus)[]).some((k) => this.current[k] !== next[k]);
    this.current = next;
    if (!changed) return;
    for (const listener of this.listeners) {
      try {
        listener(next);
      } catch (err) {
        this.log("error", `a status listener failed: ${(err as Error).message}`);
      }
    }
  }

  private log(level: LogLevel, message: string): void {
    this.options.log?.(level, message);
  }
}

/** The latest-wins slot of a request: one completion and one next-edit suggestion per document. */
function latestKey(kind: RequestKind, uri: string): string {
  return `${kind}\u0000${uri}`;
}
