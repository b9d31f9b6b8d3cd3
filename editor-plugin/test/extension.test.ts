import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SocketFactory, type FakeSocket } from "./fake-socket.js";
import {
  CancellationTokenSource,
  documentAt,
  extensionContext,
  InlineCompletionItem,
  InlineCompletionTriggerKind,
  MockEditor,
  Position,
  Range,
  resetState,
  state,
  type MockDocument,
} from "./vscode-mock.js";

const sockets = vi.hoisted(() => ({ factory: null as null | { create(url: string, headers: Record<string, string>): unknown } }));

vi.mock("ws", () => ({
  // The extension does `new WebSocket(url, {headers})`; hand it a scripted socket instead.
  default: function WebSocket(url: string, options: { headers: Record<string, string> }) {
    return sockets.factory!.create(url, options.headers);
  },
}));

const { activate, deactivate } = await import("../src/extension.js");

const PY = "file:///work/fib.py";
let factory: SocketFactory;
let posted: unknown[];

function start(documents: MockDocument[] = [documentAt(PY, "python", "def fib(n):\n")]): FakeSocket {
  state.documents.push(...documents);
  activate(extensionContext() as never);
  const socket = factory.last;
  socket.accept();
  return socket;
}

function provide(document: MockDocument, line: number, character: number, trigger = InlineCompletionTriggerKind.Automatic) {
  const source = new CancellationTokenSource();
  const result = state.provider!.provideInlineCompletionItems(
    document,
    new Position(line, character),
    { triggerKind: trigger },
    source.token,
  );
  return { result, source };
}

function answer(socket: FakeSocket, text: string, index = -1): string {
  const complete = socket.ofType("complete").at(index)!;
  socket.reply({
    type: "completion",
    requestId: complete.requestId,
    uri: complete.uri,
    version: complete.version!,
    items: [{ text, range: { start: complete.position, end: complete.position } }],
  });
  return complete.requestId;
}

beforeEach(() => {
  vi.useFakeTimers();
  resetState();
  factory = new SocketFactory();
  sockets.factory = factory;
  posted = [];
  vi.stubGlobal("fetch", async (_url: string, init: { body: string }) => {
    posted.push(JSON.parse(init.body));
    return { ok: true, status: 200, text: async () => "" };
  });
});

afterEach(async () => {
  await deactivate();
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

describe("activation", () => {
  it("connects to the configured server and opens the files already open, not virtual documents", () => {
    state.settings.set("splice.serverUrl", "ws://10.0.0.5:9000/v1/documents");
    state.settings.set("splice.apiKey", "secret");
    const socket = start([
      documentAt(PY, "python", "def fib(n):\n"),
      documentAt("untitled:Untitled-1", "javascript", "let a"),
      documentAt("output:extension-output-1", "log", "noise"),
      documentAt("git:/work/fib.py", "python", "old"),
    ]);
    expect(socket.url).toBe("ws://10.0.0.5:9000/v1/documents");
    expect(socket.headers).toEqual({ Authorization: "Bearer secret" });
    expect(socket.ofType("open").map((o) => [o.uri, o.languageId, o.text])).toEqual([
      [PY, "python", "def fib(n):\n"],
      ["untitled:Untitled-1", "javascript", "let a"],
    ]);
    expect(state.statusBar.text).toBe("$(check) Splice");
    expect(state.statusBar.command).toBe("splice.toggle");
  });

  it("shows a bad server URL in the status bar instead of failing", () => {
    state.settings.set("splice.serverUrl", "http://127.0.0.1:8600");
    state.documents.push(documentAt(PY, "python", ""));
    activate(extensionContext() as never);
    expect(factory.sockets).toHaveLength(0);
    expect(state.statusBar.text).toBe("$(warning) Splice: bad URL");
    expect(state.statusBar.tooltip).toMatch(/must start with ws:\/\/ or wss:\/\//);
    expect(state.log.join("\n")).toMatch(/error: splice.serverUrl/);
  });
});

describe("document sync", () => {
  it("sends VS Code's content changes in order, each as the next version", () => {
    const socket = start();
    const doc = state.documents[0]!;
    doc.text = "def fib(n):\n    return n\n";
    state.events.change.fire({ document: doc, contentChanges: [{ range: new Range(1, 0, 1, 0), text: "    return n\n" }] });
    state.events.change.fire({
      document: doc,
      contentChanges: [
        { range: new Range(1, 11, 1, 12), text: "1" },
        { range: new Range(0, 4, 0, 7), text: "f" },
      ],
    });
    state.events.change.fire({ document: doc, contentChanges: [] });
    expect(socket.ofType("change")).toEqual([
      {
        type: "change",
        uri: PY,
        version: 2,
        changes: [{ range: { start: { line: 1, character: 0 }, end: { line: 1, character: 0 } }, text: "    return n\n" }],
      },
      {
        type: "change",
        uri: PY,
        version: 3,
        changes: [
          { range: { start: { line: 1, character: 11 }, end: { line: 1, character: 12 } }, text: "1" },
          { range: { start: { line: 0, character: 4 }, end: { line: 0, character: 7 } }, text: "f" },
        ],
      },
    ]);
  });

  it("opens and closes documents as VS Code does, and follows the language setting", () => {
    const socket = start();
    const ts = documentAt("file:///work/a.ts", "typescript", "let x");
    state.documents.push(ts);
    state.events.open.fire(ts);
    expect(socket.sent.at(-1)).toMatchObject({ type: "open", uri: "file:///work/a.ts" });

    state.settings.set("splice.enabledLanguages", ["python"]);
    state.events.configuration.fire({ affectsConfiguration: (s) => s === "splice" });
    expect(socket.sent.at(-1)).toEqual({ type: "close", uri: "file:///work/a.ts" });

    state.events.close.fire(state.documents[0]!);
    expect(socket.sent.at(-1)).toEqual({ type: "close", uri: PY });
  });
});

describe("inline completions", () => {
  it("waits for a pause, asks the server and returns an item that reports its acceptance", async () => {
    const socket = start();
    const doc = state.documents[0]!;
    const { result } = provide(doc, 1, 0);
    await vi.advanceTimersByTimeAsync(100);
    expect(socket.ofType("complete")).toHaveLength(0); // still debouncing
    await vi.advanceTimersByTimeAsync(50);
    expect(socket.ofType("complete")[0]).toMatchObject({ uri: PY, position: { line: 1, character: 0 }, maxTokens: 64 });
    const requestId = answer(socket, "    return n");
    const items = (await result)!;
    expect(items).toHaveLength(1);
    expect(items[0]).toBeInstanceOf(InlineCompletionItem);
    expect(items[0]!.insertText).toBe("    return n");
    expect(items[0]!.range).toEqual(new Range(1, 0, 1, 0));
    expect(items[0]!.command).toMatchObject({ command: "splice.accepted", arguments: [requestId, 0] });

    await vi.advanceTimersByTimeAsync(400);
    state.commands.get("splice.accepted")!(requestId, 0);
    await vi.advanceTimersByTimeAsync(1000);
    expect(posted).toEqual([
      { type: "view", completion_id: requestId, choice_index: 0 },
      { type: "select", completion_id: requestId, choice_index: 0, elapsed_ms: 400 },
    ]);
  });

  it("an explicit request skips the debounce; a replaced suggestion counts as dismissed", async () => {
    const socket = start();
    const doc = state.documents[0]!;
    const first = provide(doc, 1, 0, InlineCompletionTriggerKind.Invoke);
    const firstId = answer(socket, "a");
    await first.result;
    await vi.advanceTimersByTimeAsync(250);
    const second = provide(doc, 1, 0, InlineCompletionTriggerKind.Invoke);
    const secondId = answer(socket, "b");
    await second.result;
    await vi.advanceTimersByTimeAsync(1000);
    expect(posted).toEqual([
      { type: "view", completion_id: firstId, choice_index: 0 },
      { type: "dismiss", completion_id: firstId, choice_index: 0, elapsed_ms: 250 },
      { type: "view", completion_id: secondId, choice_index: 0 },
    ]);
  });

  it("VS Code's cancellation sends cancel for the request in flight", async () => {
    const socket = start();
    const { result, source } = provide(state.documents[0]!, 1, 0, InlineCompletionTriggerKind.Invoke);
    source.cancel();
    expect(await result).toBeUndefined();
    const requestId = socket.ofType("complete")[0]!.requestId;
    expect(socket.ofType("cancel")).toEqual([{ type: "cancel", requestId }]);
  });

  it("a cancellation during the debounce sends nothing", async () => {
    const socket = start();
    const { result, source } = provide(state.documents[0]!, 1, 0);
    await vi.advanceTimersByTimeAsync(50);
    source.cancel();
    expect(await result).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1000);
    expect(socket.ofType("complete")).toHaveLength(0);
  });

  it("a server error is logged and shown in the status bar, not thrown at VS Code", async () => {
    const socket = start();
    const { result } = provide(state.documents[0]!, 1, 0, InlineCompletionTriggerKind.Invoke);
    const requestId = socket.ofType("complete")[0]!.requestId;
    socket.reply({ type: "error", requestId, uri: PY, code: "queue_full", message: "the model is busy" });
    expect(await result).toBeUndefined();
    expect(state.statusBar.text).toBe("$(warning) Splice: queue_full");
    expect(state.log.join("\n")).toMatch(/warn: completion for file:\/\/\/work\/fib.py failed: the model is busy/);
  });
});

describe("toggle", () => {
  it("turns completions off (disconnecting) and back on (re-opening documents)", async () => {
    const socket = start();
    await state.commands.get("splice.toggle")!();
    expect(socket.closedByClient).not.toBeNull();
    expect(state.statusBar.text).toBe("$(circle-slash) Splice off");
    expect(state.globalState.get("splice.enabled")).toBe(false);
    const { result } = provide(state.documents[0]!, 1, 0, InlineCompletionTriggerKind.Invoke);
    expect(await result).toBeUndefined();

    await state.commands.get("splice.toggle")!();
    factory.last.accept();
    expect(factory.sockets).toHaveLength(2);
    expect(factory.last.ofType("open")).toHaveLength(1);
    expect(state.statusBar.text).toBe("$(check) Splice");
  });
});

describe("compare with server", () => {
  it("reports where the server's copy differs and re-sends the document", async () => {
    const socket = start();
    const doc = state.documents[0]!;
    state.activeTextEditor = new MockEditor(doc);
    const done = state.commands.get("splice.compareWithServer")!() as Promise<void>;
    socket.reply({ type: "document", uri: PY, version: 1, languageId: "python", text: "def fob(n):\n" });
    await done;
    expect(state.messages.at(-1)).toMatch(/differs \(first difference at line 1, column 6; server version 1, editor version 1\)/);
    expect(socket.sent.at(-1)).toMatchObject({ type: "open", uri: PY, version: 2, text: "def fib(n):\n" });
  });
});

describe("next-edit suggestions", () => {
  it("are off by default: an edit asks for none", async () => {
    const doc = documentAt(PY, "python", "def fib(n):\n");
    state.activeTextEditor = new MockEditor(doc);
    const socket = start([doc]);
    state.events.change.fire({ document: doc, contentChanges: [{ range: new Range(0, 8, 0, 9), text: "k" }] });
    await vi.advanceTimersByTimeAsync(2000);
    expect(socket.ofType("nextEdit")).toEqual([]);
  });

  it("after an edit and a pause, show the suggested edit; Tab's command applies it, an edit dismisses it", async () => {
    state.settings.set("splice.nextEdit.enabled", true);
    const doc = documentAt(PY, "python", "def fib(n):\n    return n\n");
    const editor = new MockEditor(doc, new Position(0, 9));
    state.activeTextEditor = editor;
    const socket = start([doc]);
    doc.text = "def fib(k):\n    return n\n";
    state.events.change.fire({ document: doc, contentChanges: [{ range: new Range(0, 8, 0, 9), text: "k" }] });
    await vi.advanceTimersByTimeAsync(699);
    expect(socket.ofType("nextEdit")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    const asked = socket.ofType("nextEdit")[0]!;
    expect(asked).toMatchObject({ uri: PY, position: { line: 0, character: 9 }, version: 2 });
    const range = { start: { line: 1, character: 11 }, end: { line: 1, character: 12 } };
    socket.reply({
      type: "nextEditResult",
      requestId: asked.requestId,
      uri: PY,
      version: 2,
      window: { start: { line: 0, character: 0 }, end: { line: 2, character: 0 } },
      edits: [{ range, text: "k" }],
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(state.contexts.get("splice.nextEditVisible")).toBe(true);
    const shown = [...editor.decorations.values()].flat();
    expect(shown).toHaveLength(2); // the replaced text, and the new text after it
    await state.commands.get("splice.acceptNextEdit")!();
    expect(editor.edits).toEqual([{ range: new Range(1, 11, 1, 12), text: "k" }]);
    expect(state.contexts.get("splice.nextEditVisible")).toBe(false);
    expect([...editor.decorations.values()].flat()).toEqual([]);
  });
});
