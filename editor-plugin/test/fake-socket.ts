/**
 * An in-memory WebSocket and a scripted server for the client tests: the test decides when
 * the socket opens, what the server says and when the connection drops, and reads back every
 * message the client sent.
 */

import type { WebSocketFactory, WebSocketLike } from "../src/core/client.js";
import { applyChanges } from "../src/core/positions.js";
import type { ClientMessage, ServerMessage } from "../src/core/protocol.js";

type Handler = ((event: never) => void) | null;

export class FakeSocket implements WebSocketLike {
  readyState = 0; // CONNECTING
  onopen: Handler = null;
  onmessage: Handler = null;
  onclose: Handler = null;
  onerror: Handler = null;
  readonly sent: ClientMessage[] = [];
  closedByClient: { code?: number; reason?: string } | null = null;

  constructor(
    readonly url: string,
    readonly headers: Record<string, string>,
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("FakeSocket: send() while not open");
    this.sent.push(JSON.parse(data) as ClientMessage);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { ...(code !== undefined && { code }), ...(reason !== undefined && { reason }) };
    this.readyState = 3;
  }

  // -- what the server side does ------------------------------------------------------------

  accept(): void {
    this.readyState = 1;
    this.fire(this.onopen, {});
  }

  reply(message: ServerMessage | Record<string, unknown>): void {
    this.fire(this.onmessage, { data: JSON.stringify(message) });
  }

  replyRaw(data: unknown): void {
    this.fire(this.onmessage, { data });
  }

  fail(message: string): void {
    this.fire(this.onerror, { message });
  }

  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.fire(this.onclose, { code, reason });
  }

  /** Messages of one type the client sent, in order. */
  ofType<T extends ClientMessage["type"]>(type: T): Extract<ClientMessage, { type: T }>[] {
    return this.sent.filter((m): m is Extract<ClientMessage, { type: T }> => m.type === type);
  }

  private fire(handler: Handler, event: unknown): void {
    (handler as ((event: unknown) => void) | null)?.(event);
  }
}

/** A factory that records every socket it makes; `last` is the current one. */
export class SocketFactory {
  readonly sockets: FakeSocket[] = [];
  readonly create: WebSocketFactory = (url, headers) => {
    const socket = new FakeSocket(url, headers);
    this.sockets.push(socket);
    return socket;
  };

  get last(): FakeSocket {
    const socket = this.sockets.at(-1);
    if (!socket) throw new Error("no socket was created");
    return socket;
  }
}

/**
 * The server's document bookkeeping, as the README specifies it: `open` replaces, `change`
 * must carry exactly version + 1 and applies its edits in order. Used to check that the
 * client's stream of messages rebuilds the editor's text exactly.
 */
export class DocumentMirror {
  readonly docs = new Map<string, { version: number; text: string }>();
  readonly gaps: string[] = [];

  apply(message: ClientMessage): void {
    if (message.type === "open") {
      this.docs.set(message.uri, { version: message.version, text: message.text });
    } else if (message.type === "change") {
      const doc = this.docs.get(message.uri);
      if (!doc) throw new Error(`change for unopened ${message.uri}`);
      if (message.version !== doc.version + 1) {
        this.gaps.push(`${message.uri}: expected ${doc.version + 1}, got ${message.version}`);
        return;
      }
      doc.text = applyChanges(doc.text, message.changes);
      doc.version = message.version;
    } else if (message.type === "close") {
      this.docs.delete(message.uri);
    }
  }

  applyAll(messages: readonly ClientMessage[]): this {
    for (const m of messages) this.apply(m);
    return this;
  }
}
