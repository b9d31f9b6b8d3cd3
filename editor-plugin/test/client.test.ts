import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SpliceClient, type ClientStatus, type SpliceClientOptions } from "../src/core/client.js";
import { CancelledError, SpliceError } from "../src/core/errors.js";
import { applyChanges } from "../src/core/positions.js";
import type { CompletionMessage, TextChange } from "../src/core/protocol.js";
import { DocumentMirror, SocketFactory } from "./fake-socket.js";

const URL = "ws://127.0.0.1:8600/v1/documents";
const URI = "file:///src/fib.py";

/** A host-side document: the text the editor shows, edited through the client. */
class Buffer {
  constructor(
    readonly uri: string,
    public text: string,
    readonly languageId = "python",
  ) {}
  getText = (): string => this.text;
  edit(client: SpliceClient, changes: TextChange[]): void {
    this.text = applyChanges(this.text, changes);
    client.changeDocument(this.uri, changes);
  }
}

function at(line: number, character: number): { line: number; character: number } {
  return { line, character };
}

function insert(line: number, character: number, text: string): TextChange {
  return { range: { start: at(line, character), end: at(line, character) }, text };
}

function completion(requestId: string, version: number, text = "return n"): CompletionMessage {
  return {
    type: "completion",
    requestId,
    uri: URI,
    version,
    items: [{ text, range: { start: at(1, 4), end: at(1, 4) } }],
    usage: { prompt_tokens: 5, completion_tokens: 2, encoded_prompt_tokens: 5, reused_prompt_tokens: 0 },
    timings: { total_ms: 12 },
  };
}

let factory: SocketFactory;
let logs: string[];

function makeClient(options: Partial<SpliceClientOptions> = {}): SpliceClient {
  return new SpliceClient({
    url: URL,
    createSocket: factory.create,
    random: () => 0, // no jitter: delays are exactly initial × 2^n
    pingIntervalMs: 0,
    log: (level, message) => logs.push(`${level}: ${message}`),
    ...options,
  });
}

/** A started client whose first socket is open, with `doc` opened. */
function connected(doc = new Buffer(URI, "def fib(n):\n"), options: Partial<SpliceClientOptions> = {}) {
  const client = makeClient(options);
  client.openDocument(doc);
  client.start();
  factory.last.accept();
  return { client, doc, socket: factory.last };
}

beforeEach(() => {
  vi.useFakeTimers();
  factory = new SocketFactory();
  logs = [];
});

afterEach(() => {
  vi.useRealTimers();
});

describe("documents", () => {
  it("opens documents tracked before the connection once it is up", () => {
    const { socket } = connected();
    expect(socket.sent).toEqual([
      { type: "open", uri: URI, languageId: "python", version: 1, text: "def fib(n):\n" },
    ]);
  });

  it("sends open at once for a document opened while connected, and close when it closes", () => {
    const { client, socket } = connected();
    client.openDocument(new Buffer("file:///b.ts", "let x = 1;", "typescript"));
    client.closeDocument("file:///b.ts");
    expect(socket.sent.slice(1)).toEqual([
      { type: "open", uri: "file:///b.ts", languageId: "typescript", version: 1, text: "let x = 1;" },
      { type: "close", uri: "file:///b.ts" },
    ]);
    expect(client.isOpen("file:///b.ts")).toBe(false);
  });

  it("numbers changes server version + 1 and keeps their order, so the server rebuilds the text", () => {
    const { client, doc, socket } = connected();
    doc.edit(client, [insert(1, 0, "    ")]);
    doc.edit(client, [insert(1, 4, "if n < 2:\r\n        return n")]);
    // One message with two edits: the second applies to the text the first left.
    doc.edit(client, [insert(0, 0, "# 😀\n"), { range: { start: at(2, 0), end: at(2, 4) }, text: "\t" }]);
    doc.edit(client, []); // VS Code sends empty change events (e.g. dirty flag); nothing to send
    const changes = socket.ofType("change");
    expect(changes.map((c) => c.version)).toEqual([2, 3, 4]);
    expect(changes[2]!.changes).toHaveLength(2);
    const mirror = new DocumentMirror().applyAll(socket.sent);
    expect(mirror.gaps).toEqual([]);
    expect(mirror.docs.get(URI)).toEqual({ version: 4, text: doc.text });
    expect(doc.text).toBe("# 😀\ndef fib(n):\n\tif n < 2:\r\n        return n");
  });

  it("re-opening a document replaces it with a higher version", () => {
    const { client, doc, socket } = connected();
    doc.edit(client, [insert(1, 0, "x")]);
    client.openDocument(new Buffer(URI, "new text", "plaintext"));
    expect(socket.sent.at(-1)).toEqual({ type: "open", uri: URI, languageId: "plaintext", version: 3, text: "new text" });
  });

  it("refuses a change for a document it never opened: that is a host bug", () => {
    const client = makeClient();
    expect(() => client.changeDocument("file:///nope", [insert(0, 0, "x")])).toThrow(/before openDocument/);
  });
});

describe("resync", () => {
  it("answers resync with open carrying the full current text and version", () => {
    const { client, doc, socket } = connected();
    doc.edit(client, [insert(1, 0, "    ")]);
    doc.edit(client, [insert(1, 4, "pass")]);
    socket.reply({ type: "resync", uri: URI, expectedVersion: 2, reason: "version_gap" });
    expect(socket.sent.at(-1)).toEqual({
      type: "open",
      uri: URI,
      languageId: "python",
      version: 3,
      text: "def fib(n):\n    pass",
    });
    // The next change continues from the version the open carried.
    doc.edit(client, [insert(1, 8, "\n")]);
    expect(socket.sent.at(-1)).toMatchObject({ type: "change", version: 4 });
    const mirror = new DocumentMirror().applyAll(socket.sent.filter((m) => !(m.type === "change" && m.version === 3)));
    expect(mirror.docs.get(URI)?.text).toBe(doc.text);
    expect(logs.some((l) => l.includes("resync") && l.includes("version_gap"))).toBe(true);
  });

  it("ignores a resync for a document it has closed", () => {
    const { client, socket } = connected();
    client.closeDocument(URI);
    const before = socket.sent.length;
    socket.reply({ type: "resync", uri: URI, expectedVersion: null, reason: "unknown_document" });
    expect(socket.sent.length).toBe(before);
  });
});

describe("reconnect", () => {
  it("backs off exponentially up to the cap, then re-opens every document with its current text", () => {
    const other = new Buffer("file:///b.py", "b = 1\n");
    const { client, doc, socket } = connected(undefined, { reconnect: { initialDelayMs: 100, maxDelayMs: 500 } });
    client.openDocument(other);
    socket.drop(1006);
    expect(client.status.connection).toBe("reconnecting");
    expect(client.status.error?.message).toMatch(/closed \(code 1006\); retrying in 0\.1 s/);

    // Edits while offline are not sent anywhere; the reconnect carries them in the open.
    doc.edit(client, [insert(1, 0, "    return 1")]);

    const waits: number[] = [];
    for (let attempt = 0; attempt < 5; attempt++) {
      const count = factory.sockets.length;
      let waited = 0;
      while (factory.sockets.length === count) {
        vi.advanceTimersByTime(10);
        waited += 10;
      }
      waits.push(waited);
      if (attempt < 4) factory.last.drop(1006); // refused again, before it ever opened
    }
    expect(waits).toEqual([100, 200, 400, 500, 500]);

    factory.last.accept();
    expect(client.status.connection).toBe("connected");
    expect(client.status.error).toBeNull();
    const opens = factory.last.ofType("open");
    expect(opens.map((o) => [o.uri, o.version, o.text])).toEqual([
      [URI, 2, "def fib(n):\n    return 1"],
      ["file:///b.py", 1, "b = 1\n"],
    ]);
  });

  it("applies jitter below the exponential ceiling", () => {
    const { socket } = connected(undefined, {
      random: () => 1,
      reconnect: { initialDelayMs: 1000, jitter: 0.5 },
    });
    socket.drop();
    vi.advanceTimersByTime(499);
    expect(factory.sockets).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(factory.sockets).toHaveLength(2);
  });

  it("resets the backoff after a connection that stayed up, not after a short one", () => {
    connected(undefined, { reconnect: { initialDelayMs: 100, stableAfterMs: 5000 } });
    factory.last.drop();
    vi.advanceTimersByTime(100);
    factory.last.accept();
    factory.last.drop(); // up for 0 ms: the next wait doubles
    vi.advanceTimersByTime(199);
    expect(factory.sockets).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(factory.sockets).toHaveLength(3);
    factory.last.accept();
    vi.advanceTimersByTime(6000);
    factory.last.drop(); // up for 6 s: back to the first delay
    vi.advanceTimersByTime(100);
    expect(factory.sockets).toHaveLength(4);
  });

  it("stops retrying when the server refuses the API key", () => {
    const client = makeClient({ apiKey: "wrong" });
    client.start();
    const socket = factory.last;
    socket.accept();
    socket.reply({ type: "error", code: "unauthorized", message: "unknown API key" });
    socket.drop(4401, "unauthorized");
    vi.advanceTimersByTime(120_000);
    expect(factory.sockets).toHaveLength(1);
    expect(client.status.connection).toBe("unauthorized");
    expect(client.status.error?.message).toMatch(/refused the API key: unknown API key/);
    // A new key reconnects at once.
    client.setEndpoint(URL, "right");
    expect(factory.sockets).toHaveLength(2);
    expect(factory.last.headers).toEqual({ Authorization: "Bearer right" });
  });

  it("stop() closes the socket and never reconnects; start() comes back", () => {
    const { client, socket } = connected();
    client.stop();
    expect(socket.closedByClient).not.toBeNull();
    expect(client.status.connection).toBe("stopped");
    vi.advanceTimersByTime(60_000);
    expect(factory.sockets).toHaveLength(1);
    client.start();
    factory.last.accept();
    expect(factory.last.ofType("open")).toHaveLength(1);
  });
});

describe("authentication", () => {
  it("sends the key as a Bearer header by default", () => {
    makeClient({ apiKey: "k1" }).start();
    expect(factory.last.headers).toEqual({ Authorization: "Bearer k1" });
    expect(factory.last.url).toBe(URL);
  });

  it("sends the key as ?api_key= for browsers", () => {
    makeClient({ url: `${URL}?x=1`, apiKey: "k 1", apiKeyTransport: "query" }).start();
    expect(factory.last.headers).toEqual({});
    expect(new globalThis.URL(factory.last.url).searchParams.get("api_key")).toBe("k 1");
    expect(new globalThis.URL(factory.last.url).searchParams.get("x")).toBe("1");
  });

  it("rejects a URL that is not ws:// or wss:// with a message that says what to use", () => {
    expect(() => makeClient({ url: "http://127.0.0.1:8600" })).toThrow(/must start with ws:\/\/ or wss:\/\//);
    expect(() => makeClient({ url: "not a url" })).toThrow(SpliceError);
  });
});

describe("completions", () => {
  it("sends complete with the document version and resolves with the items", async () => {
    const { client, socket } = connected();
    const statuses: ClientStatus[] = [];
    client.onStatus((s) => statuses.push(s));
    const promise = client.complete(URI, at(1, 0), { maxTokens: 32, temperature: 0.2 });
    const sent = socket.ofType("complete")[0]!;
    expect(sent).toEqual({
      type: "complete",
      uri: URI,
      position: at(1, 0),
      requestId: sent.requestId,
      version: 1,
      maxTokens: 32,
      temperature: 0.2,
    });
    expect(client.status.busy).toBe(true);
    vi.advanceTimersByTime(40);
    socket.reply(completion(sent.requestId, 1));
    const result = await promise;
    expect(result.items[0]?.text).toBe("return n");
    expect(result.latencyMs).toBe(40);
    expect(result.requestId).toBe(sent.requestId);
    expect(client.status.busy).toBe(false);
    expect(client.status.completionMs).toBe(40);
    expect(statuses[0]?.busy).toBe(true);
    expect(statuses.at(-1)).toMatchObject({ busy: false, completionMs: 40, error: null });
  });

  it("latest wins: a newer request for the same document cancels the older one", async () => {
    const { client, socket } = connected();
    client.openDocument(new Buffer("file:///other.py", ""));
    const first = client.complete(URI, at(1, 0));
    const elsewhere = client.complete("file:///other.py", at(0, 0));
    const second = client.complete(URI, at(1, 0));
    await expect(first).rejects.toBeInstanceOf(CancelledError);
    const [r1, r2, r3] = socket.ofType("complete").map((m) => m.requestId);
    expect(new Set([r1, r2, r3]).size).toBe(3);
    // The server cancels the older one itself (latest wins there too); no cancel is needed.
    expect(socket.ofType("cancel")).toEqual([]);
    socket.reply({ type: "error", requestId: r1!, uri: URI, code: "cancelled", message: "replaced" });
    socket.reply(completion(r1!, 1, "stale")); // late answers for the old id are ignored
    socket.reply(completion(r3!, 1, "fresh"));
    socket.reply({ ...completion(r2!, 1, "other"), uri: "file:///other.py" });
    expect((await second).items[0]?.text).toBe("fresh");
    expect((await elsewhere).items[0]?.text).toBe("other");
    expect(client.status.error).toBeNull();
  });

  it("an aborted request sends cancel with its requestId and rejects as cancelled", async () => {
    const { client, socket } = connected();
    const abort = new AbortController();
    const promise = client.complete(URI, at(1, 0), {}, abort.signal);
    abort.abort();
    await expect(promise).rejects.toBeInstanceOf(CancelledError);
    const requestId = socket.ofType("complete")[0]!.requestId;
    expect(socket.ofType("cancel")).toEqual([{ type: "cancel", requestId }]);
    expect(client.status.busy).toBe(false);
  });

  it("an already aborted signal sends nothing", async () => {
    const { client, socket } = connected();
    const abort = new AbortController();
    abort.abort();
    await expect(client.complete(URI, at(1, 0), {}, abort.signal)).rejects.toBeInstanceOf(CancelledError);
    expect(socket.ofType("complete")).toEqual([]);
  });

  it("drops a result made for a version the editor has moved past", async () => {
    const { client, doc, socket } = connected();
    const promise = client.complete(URI, at(1, 0));
    doc.edit(client, [insert(1, 0, "x")]);
    socket.reply(completion(socket.ofType("complete")[0]!.requestId, 1));
    await expect(promise).rejects.toThrow(/changed after the request/);
  });

  it("a server error rejects with its code and shows in the status; cancelled stays silent", async () => {
    const { client, socket } = connected();
    const promise = client.complete(URI, at(1, 0));
    const requestId = socket.ofType("complete")[0]!.requestId;
    socket.reply({ type: "error", requestId, uri: URI, code: "queue_full", message: "model busy" });
    await expect(promise).rejects.toMatchObject({ name: "SpliceError", code: "queue_full", message: "model busy" });
    expect(client.status.error).toEqual({ code: "queue_full", message: `model busy (${URI})` });

    const again = client.complete(URI, at(1, 0));
    socket.reply({ type: "error", requestId: socket.ofType("complete")[1]!.requestId, code: "cancelled", message: "x" });
    await expect(again).rejects.toBeInstanceOf(CancelledError);
  });

  it("fails fast when disconnected, and fails requests in flight when the connection drops", async () => {
    const client = makeClient();
    client.openDocument(new Buffer(URI, ""));
    await expect(client.complete(URI, at(0, 0))).rejects.toMatchObject({ code: "disconnected" });
    client.start();
    factory.last.accept();
    const promise = client.complete(URI, at(0, 0));
    factory.last.drop();
    await expect(promise).rejects.toMatchObject({ code: "disconnected" });
    await expect(client.complete("file:///unknown", at(0, 0))).rejects.toMatchObject({ code: "not_open" });
  });

  it("times out, cancelling on the server", async () => {
    const { client, socket } = connected(undefined, { requestTimeoutMs: 1000 });
    const promise = client.complete(URI, at(1, 0));
    const assertion = expect(promise).rejects.toMatchObject({ code: "timeout" });
    vi.advanceTimersByTime(1000);
    await assertion;
    expect(socket.ofType("cancel")).toHaveLength(1);
  });

  it("closing a document cancels its request", async () => {
    const { client } = connected();
    const promise = client.complete(URI, at(1, 0));
    client.closeDocument(URI);
    await expect(promise).rejects.toBeInstanceOf(CancelledError);
  });
});

describe("next-edit suggestions", () => {
  function suggestion(requestId: string, version: number, edits = [{ range: { start: at(1, 4), end: at(1, 4) }, text: "pass" }]) {
    return {
      type: "nextEditResult" as const,
      requestId,
      uri: URI,
      version,
      window: { start: at(0, 0), end: at(2, 0) },
      edits,
      finishReason: "stop",
    };
  }

  it("sends nextEdit with the window options and resolves with the edits", async () => {
    const { client, socket } = connected();
    const promise = client.nextEdit(URI, at(1, 0), { linesBefore: 3, linesAfter: 2 });
    const sent = socket.ofType("nextEdit")[0]!;
    expect(sent).toEqual({
      type: "nextEdit",
      uri: URI,
      position: at(1, 0),
      requestId: sent.requestId,
      version: 1,
      linesBefore: 3,
      linesAfter: 2,
    });
    vi.advanceTimersByTime(25);
    socket.reply(suggestion(sent.requestId, 1));
    const result = await promise;
    expect(result.edits).toEqual([{ range: { start: at(1, 4), end: at(1, 4) }, text: "pass" }]);
    expect(result.window).toEqual({ start: at(0, 0), end: at(2, 0) });
    expect(result.latencyMs).toBe(25);
    expect(client.status.busy).toBe(false);
  });

  it("a completion and a suggestion for one document do not cancel each other; a newer suggestion does", async () => {
    const { client, socket } = connected();
    const completionPromise = client.complete(URI, at(1, 0));
    const first = client.nextEdit(URI, at(1, 0));
    const second = client.nextEdit(URI, at(1, 0));
    await expect(first).rejects.toBeInstanceOf(CancelledError);
    const [, id2] = socket.ofType("nextEdit").map((m) => m.requestId);
    socket.reply(completion(socket.ofType("complete")[0]!.requestId, 1));
    socket.reply(suggestion(id2!, 1, []));
    expect((await completionPromise).items).toHaveLength(1);
    expect((await second).edits).toEqual([]);
  });

  it("drops a suggestion made for an older version and rejects on a server error", async () => {
    const { client, socket, doc } = connected();
    const stale = client.nextEdit(URI, at(0, 0));
    const id = socket.ofType("nextEdit")[0]!.requestId;
    doc.edit(client, [insert(0, 0, "#")]);
    socket.reply(suggestion(id, 1));
    await expect(stale).rejects.toBeInstanceOf(CancelledError);
    const bad = client.nextEdit(URI, at(0, 0));
    const id2 = socket.ofType("nextEdit")[1]!.requestId;
    socket.reply({ type: "error", requestId: id2, uri: URI, code: "window_too_large", message: "too many lines" });
    await expect(bad).rejects.toMatchObject({ code: "window_too_large" });
    const closed = client.nextEdit(URI, at(0, 0));
    client.closeDocument(URI);
    await expect(closed).rejects.toBeInstanceOf(CancelledError);
  });
});

describe("refused documents", () => {
  it("stops syncing a document the server refused until the next connection", async () => {
    const { client, doc, socket } = connected();
    socket.reply({ type: "error", uri: URI, code: "document_too_large", message: "over 4 MiB" });
    const before = socket.sent.length;
    doc.edit(client, [insert(1, 0, "x")]);
    expect(socket.sent.length).toBe(before);
    await expect(client.complete(URI, at(1, 0))).rejects.toMatchObject({ code: "document_too_large" });
    expect(client.status.error?.code).toBe("document_too_large");

    socket.drop();
    vi.advanceTimersByTime(1000);
    factory.last.accept();
    expect(factory.last.ofType("open")[0]).toMatchObject({ version: 2, text: "def fib(n):\nx" });
  });
});

describe("keepalive", () => {
  it("measures ping latency and drops a connection whose pong never comes", () => {
    const { client, socket } = connected(undefined, {
      pingIntervalMs: 1000,
      pongTimeoutMs: 500,
      reconnect: { initialDelayMs: 100 },
    });
    const ping = socket.ofType("ping")[0]!;
    vi.advanceTimersByTime(25);
    socket.reply({ type: "pong", id: ping.id! });
    expect(client.status.pingMs).toBe(25);

    vi.advanceTimersByTime(975);
    expect(socket.ofType("ping")).toHaveLength(2);
    vi.advanceTimersByTime(500); // no pong
    expect(socket.closedByClient).not.toBeNull();
    expect(client.status.connection).toBe("reconnecting");
    expect(client.status.error?.message).toMatch(/did not answer a ping within 500 ms/);
    vi.advanceTimersByTime(100);
    expect(factory.sockets).toHaveLength(2);
  });

  it("ignores a pong for another ping id", () => {
    const { client, socket } = connected(undefined, { pingIntervalMs: 1000 });
    socket.reply({ type: "pong", id: "someone-else" });
    expect(client.status.pingMs).toBeNull();
  });
});

describe("get and sync check", () => {
  it("resolves get with the server's copy and reports where it departs from the editor", async () => {
    const { client, socket } = connected(new Buffer(URI, "a\nbc\n"));
    const report = client.compareWithServer(URI);
    expect(socket.sent.at(-1)).toEqual({ type: "get", uri: URI });
    socket.reply({ type: "document", uri: URI, version: 1, languageId: "python", text: "a\nbX\n" });
    expect(await report).toEqual({
      uri: URI,
      inSync: false,
      clientVersion: 1,
      serverVersion: 1,
      firstDifference: at(1, 1),
    });

    const same = client.compareWithServer(URI);
    socket.reply({ type: "document", uri: URI, version: 1, languageId: "python", text: "a\nbc\n" });
    expect(await same).toMatchObject({ inSync: true, firstDifference: null });
  });

  it("rejects get when the server does not know the document", async () => {
    const { client, socket } = connected();
    const promise = client.get(URI);
    socket.reply({ type: "error", uri: URI, code: "unknown_document", message: "not open" });
    await expect(promise).rejects.toMatchObject({ code: "unknown_document" });
  });
});

describe("bad frames", () => {
  it("logs frames that are not protocol messages and keeps going", async () => {
    const { client, socket } = connected();
    socket.replyRaw("not json");
    socket.reply({ type: "completion", requestId: "x" });
    socket.reply({ type: "mystery" });
    expect(logs.filter((l) => l.startsWith("warn"))).toHaveLength(3);
    expect(logs.join("\n")).toMatch(/field "uri" must be a string/);
    const promise = client.complete(URI, at(1, 0));
    socket.reply(completion(socket.ofType("complete")[0]!.requestId, 1));
    await expect(promise).resolves.toMatchObject({ version: 1 });
  });
});
