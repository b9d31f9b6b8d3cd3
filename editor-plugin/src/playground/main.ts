/**
 * The browser playground: a Monaco editor wired to a Splice server through the same core client
 * as the VS Code extension. The server serves this page at /playground/ and the page talks back
 * to the host it came from, so there is nothing to configure; `?api_key=KEY` in the page's URL
 * is passed on for servers started with SPLICE_API_KEYS.
 */

import * as monaco from "monaco-editor/editor/editor.api.js";
// Only what a small demo editor needs: ghost text, brackets, clipboard, comments, find, folding.
import "monaco-editor/features/inlineCompletions/register.js";
import "monaco-editor/features/bracketMatching/register.js";
import "monaco-editor/features/clipboard/register.js";
import "monaco-editor/features/comment/register.js";
import "monaco-editor/features/find/register.js";
import "monaco-editor/features/folding/register.js";
import "monaco-editor/features/indentation/register.js";
import "monaco-editor/features/linesOperations/register.js";
import "monaco-editor/features/multicursor/register.js";
import "monaco-editor/features/wordOperations/register.js";
import "monaco-editor/features/codicon/register.js";
import "monaco-editor/languages/definitions/python/register.js";
import "monaco-editor/languages/definitions/javascript/register.js";

import {
  AdaptiveDebouncer,
  describeStatus,
  isCancelled,
  SpliceClient,
  TelemetryReporter,
  type ClientStatus,
  type CompletionResult,
  type EditItem,
  type NextEditResult,
  type TextChange,
} from "../core/index.js";

const DOCUMENT_URI = "file:///playground/demo.py";
const INITIAL_TEXT = "# Splice playground: type some Python, pause, and press Tab to accept the grey suggestion.\n\n";

declare global {
  interface Window {
    spliceEditor: monaco.editor.IStandaloneCodeEditor;
    spliceClient: SpliceClient;
    spliceDocumentUri: string;
    spliceNextEdit: { request(): Promise<NextEditResult | null>; shown(): EditItem | null };
  }
}

/** `/prefix/playground/...` is served by the server whose API lives at `/prefix/v1/...`. */
function serverPaths(): { wsUrl: string; restBase: string } {
  const prefix = location.pathname.replace(/\/playground(\/.*)?$/, "");
  const ws = location.protocol === "https:" ? "wss:" : "ws:";
  return { wsUrl: `${ws}//${location.host}${prefix}/v1/documents`, restBase: `${location.origin}${prefix}` };
}

function element(id: string): HTMLElement {
  const found = document.getElementById(id);
  if (!found) throw new Error(`playground page is missing #${id}`);
  return found;
}

// Monaco's editor worker (diffs, word ranges) is built beside this file.
self.MonacoEnvironment = {
  getWorker: () => new Worker(new URL("./editor.worker.js", location.href)),
};

const { wsUrl, restBase } = serverPaths();
const apiKey = new URLSearchParams(location.search).get("api_key") ?? "";

const client = new SpliceClient({
  url: wsUrl,
  apiKey,
  apiKeyTransport: "query", // browsers cannot set headers on a WebSocket
  createSocket: (url) => new WebSocket(url),
  log: (level, message) => console[level === "debug" ? "debug" : level](`[splice] ${message}`),
});
const telemetry = new TelemetryReporter({
  baseUrl: restBase,
  apiKey,
  log: (level, message) => console[level](`[splice telemetry] ${message}`),
});
const debouncer = new AdaptiveDebouncer({ baseMs: 150 });

const model = monaco.editor.createModel(INITIAL_TEXT, "python", monaco.Uri.parse(DOCUMENT_URI));
const editor = monaco.editor.create(element("editor"), {
  model,
  theme: "vs-dark",
  automaticLayout: true,
  fontSize: 14,
  minimap: { enabled: false },
  inlineSuggest: { enabled: true },
  quickSuggestions: false, // Monaco's word list would compete with Splice's suggestions for Tab
  wordBasedSuggestions: "off",
  tabSize: 4,
  insertSpaces: true,
});
editor.setPosition(model.getPositionAt(INITIAL_TEXT.length));

// -- document sync -------------------------------------------------------------------------------

client.openDocument({ uri: DOCUMENT_URI, languageId: model.getLanguageId(), getText: () => model.getValue() });

// Monaco's changes carry 1-based ranges into the text before the edit, in the order that makes
// them apply one after another (VS Code's contentChanges are these same objects). The client
// numbers versions itself: Monaco's versionId also moves on undo and redo.
model.onDidChangeContent((event) => {
  debouncer.noteTyping();
  nextEdits.documentChanged();
  const changes: TextChange[] = event.changes.map((change) => ({
    range: {
      start: { line: change.range.startLineNumber - 1, character: change.range.startColumn - 1 },
      end: { line: change.range.endLineNumber - 1, character: change.range.endColumn - 1 },
    },
    text: change.text,
  }));
  client.changeDocument(DOCUMENT_URI, changes);
});

// -- inline completions --------------------------------------------------------------------------

interface SpliceCompletions extends monaco.languages.InlineCompletions {
  requestId: string;
}

function cancellationSignal(token: monaco.CancellationToken): AbortSignal {
  const abort = new AbortController();
  if (token.isCancellationRequested) abort.abort();
  else token.onCancellationRequested(() => abort.abort());
  return abort.signal;
}

const lastCompletion = element("last");

function describeCompletion(result: CompletionResult): string {
  const usage = result.usage;
  const reuse = usage ? `, reused ${usage.reused_prompt_tokens}/${usage.prompt_tokens} prompt tokens` : "";
  return `last completion ${Math.round(result.latencyMs)} ms${reuse}`;
}

const provider: monaco.languages.InlineCompletionsProvider<SpliceCompletions> = {
  async provideInlineCompletions(textModel, position, context, token): Promise<SpliceCompletions | undefined> {
    if (textModel !== model || nextEdits.shown() !== null) return undefined; // Tab is the next edit's
    const signal = cancellationSignal(token);
    if (context.triggerKind === monaco.languages.InlineCompletionTriggerKind.Automatic) {
      if (!(await debouncer.wait(signal))) return undefined;
    }
    try {
      const result = await client.complete(
        DOCUMENT_URI,
        { line: position.lineNumber - 1, character: position.column - 1 },
        { maxTokens: 64 },
        signal,
      );
      debouncer.noteLatency(result.latencyMs);
      lastCompletion.textContent = describeCompletion(result);
      return {
        requestId: result.requestId,
        items: result.items.map((item) => ({
          insertText: item.text,
          range: new monaco.Range(
            item.range.start.line + 1,
            item.range.start.character + 1,
            item.range.end.line + 1,
            item.range.end.character + 1,
          ),
        })),
      };
    } catch (err) {
      if (!isCancelled(err)) console.warn(`[splice] completion failed: ${(err as Error).message}`);
      return undefined;
    }
  },
  handleItemDidShow(completions) {
    telemetry.view(completions.requestId);
  },
  handleEndOfLifetime(completions, _item, reason, summary) {
    if (!summary.shown) return;
    const elapsed = summary.shownDuration;
    if (reason.kind === monaco.languages.InlineCompletionEndOfLifeReasonKind.Accepted) {
      telemetry.select(completions.requestId, elapsed);
    } else {
      telemetry.dismiss(completions.requestId, elapsed);
    }
  },
  disposeInlineCompletions() {
    // Nothing to free: completions hold plain strings.
  },
};
monaco.languages.registerInlineCompletionsProvider("*", provider);

// -- next-edit suggestions ---------------------------------------------------------------------------

const NEXT_EDIT_PAUSE_MS = 700; // after the last edit, before a suggestion is asked for

/**
 * After an edit and a pause, asks the server for the edit that should follow (a rewrite of the
 * lines around the cursor) and shows it: the replaced text struck through, the new text after it,
 * Tab applies it (as an ordinary edit: the server gets it as a change), Esc or typing dismisses it.
 */
class NextEdits {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private abort: AbortController | null = null;
  private current: { edit: EditItem; version: number } | null = null;
  private decorations: monaco.editor.IEditorDecorationsCollection;
  private readonly visible: monaco.editor.IContextKey<boolean>;
  private applying = false;
  private readonly style = document.head.appendChild(document.createElement("style"));

  constructor(
    private readonly editor: monaco.editor.IStandaloneCodeEditor,
    private readonly toggle: HTMLInputElement,
    private readonly info: HTMLElement,
  ) {
    this.decorations = editor.createDecorationsCollection();
    this.visible = editor.createContextKey("spliceNextEditVisible", false);
    editor.addCommand(monaco.KeyCode.Tab, () => this.accept(), "spliceNextEditVisible && !inlineSuggestionVisible");
    editor.addCommand(monaco.KeyCode.Escape, () => this.dismiss(), "spliceNextEditVisible");
    toggle.addEventListener("change", () => {
      if (!toggle.checked) this.dismiss();
    });
  }

  shown(): EditItem | null {
    return this.current?.edit ?? null;
  }

  documentChanged(): void {
    if (this.applying) return;
    this.dismiss();
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.toggle.checked) this.timer = setTimeout(() => void this.request(), NEXT_EDIT_PAUSE_MS);
  }

  async request(): Promise<NextEditResult | null> {
    this.abort?.abort();
    const abort = new AbortController();
    this.abort = abort;
    const position = this.editor.getPosition();
    if (!position) return null;
    this.info.textContent = "next edit: asking…";
    try {
      const result = await client.nextEdit(
        DOCUMENT_URI,
        { line: position.lineNumber - 1, character: position.column - 1 },
        { linesBefore: 5, linesAfter: 5 },
        abort.signal,
      );
      const edit = result.edits[0];
      this.info.textContent = edit
        ? `next edit in ${Math.round(result.latencyMs)} ms: Tab applies it, Esc dismisses it`
        : `next edit: no change (${Math.round(result.latencyMs)} ms)`;
      if (edit && this.toggle.checked) this.show(edit, result.version);
      return result;
    } catch (err) {
      if (!isCancelled(err)) this.info.textContent = `next edit failed: ${(err as Error).message}`;
      return null;
    }
  }

  private show(edit: EditItem, version: number): void {
    this.current = { edit, version };
    const range = toMonacoRange(edit.range);
    // The new text is drawn by CSS after the replaced text (an `::after` rule written for it):
    // Monaco draws class-name decorations on any range, including the character before an insertion.
    const shown = edit.text.replaceAll("\n", "⏎") || "(delete)";
    this.style.textContent = `.splice-next-edit-new::after { content: ${JSON.stringify(` ${shown}  ⇥ Tab`)}; }`;
    const decorations: monaco.editor.IModelDeltaDecoration[] = [];
    if (!range.isEmpty()) {
      decorations.push({ range, options: { inlineClassName: "splice-next-edit-old", afterContentClassName: "splice-next-edit-new" } });
    } else if (range.startColumn > 1) {
      const before = new monaco.Range(range.startLineNumber, range.startColumn - 1, range.startLineNumber, range.startColumn);
      decorations.push({ range: before, options: { afterContentClassName: "splice-next-edit-new" } });
    } else {
      const first = new monaco.Range(range.startLineNumber, 1, range.startLineNumber, 2);
      decorations.push({ range: first, options: { beforeContentClassName: "splice-next-edit-new" } });
    }
    this.decorations.set(decorations);
    this.visible.set(true);
    this.editor.trigger("splice", "editor.action.inlineSuggest.hide", {});
  }

  private accept(): void {
    const current = this.current;
    if (!current) return;
    this.dismiss();
    this.applying = true;
    try {
      model.pushEditOperations([], [{ range: toMonacoRange(current.edit.range), text: current.edit.text }], () => null);
    } finally {
      this.applying = false;
    }
    this.info.textContent = "next edit applied";
  }

  dismiss(): void {
    this.abort?.abort();
    this.abort = null;
    this.current = null;
    this.decorations.clear();
    this.visible.set(false);
  }
}

function toMonacoRange(range: EditItem["range"]): monaco.Range {
  return new monaco.Range(range.start.line + 1, range.start.character + 1, range.end.line + 1, range.end.character + 1);
}

const nextEdits = new NextEdits(editor, element("next-edit") as HTMLInputElement, element("next-edit-info"));
window.spliceNextEdit = { request: () => nextEdits.request(), shown: () => nextEdits.shown() };

// -- status line ---------------------------------------------------------------------------------

const statusElement = element("status");
const detailElement = element("detail");

function render(status: ClientStatus): void {
  const summary = describeStatus(status);
  statusElement.dataset["kind"] = summary.kind;
  statusElement.textContent = summary.text;
  detailElement.textContent = summary.detail;
  detailElement.title = summary.detail;
}

client.onStatus(render);
render(client.status);

const syncElement = element("sync");
element("check").addEventListener("click", () => {
  syncElement.textContent = "comparing…";
  client.compareWithServer(DOCUMENT_URI).then(
    (report) => {
      const where = report.firstDifference
        ? `differs from line ${report.firstDifference.line + 1}, column ${report.firstDifference.character + 1}`
        : "same text";
      syncElement.textContent = report.inSync
        ? `in sync at version ${report.clientVersion}`
        : `OUT OF SYNC: ${where} (server version ${report.serverVersion}, editor version ${report.clientVersion})`;
    },
    (err: Error) => {
      syncElement.textContent = `could not compare: ${err.message}`;
    },
  );
});

window.addEventListener("pagehide", () => void telemetry.flush());

window.spliceEditor = editor;
window.spliceClient = client;
window.spliceDocumentUri = DOCUMENT_URI;

client.start();
editor.focus();
