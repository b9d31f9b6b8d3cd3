/**
 * The VS Code extension: a thin adapter from VS Code's events and inline-completion API to the
 * editor-independent core (src/core). Everything that can be tested without VS Code lives in
 * the core; this file only translates types, reads settings and draws the status bar.
 */

import * as vscode from "vscode";
import WebSocket from "ws";
import {
  AdaptiveDebouncer,
  describeStatus,
  isCancelled,
  restBaseUrl,
  SpliceClient,
  TelemetryReporter,
  type EditItem,
  type LogLevel,
  type StatusKind,
  type TextChange,
} from "./core/index.js";

/** Documents with these schemes are files the user edits; output panes, git views and the like are not sent. */
const TRACKED_SCHEMES = new Set(["file", "untitled"]);
const ENABLED_KEY = "splice.enabled";

interface Settings {
  serverUrl: string;
  apiKey: string;
  enabledLanguages: string[];
  debounceMs: number;
  maxTokens: number;
  nextEdit: boolean;
}

const NEXT_EDIT_PAUSE_MS = 700; // after the last edit, before a next-edit suggestion is asked for
const NEXT_EDIT_CONTEXT = "splice.nextEditVisible";

function readSettings(): Settings {
  const config = vscode.workspace.getConfiguration("splice");
  return {
    serverUrl: config.get<string>("serverUrl", "ws://127.0.0.1:8600/v1/documents").trim(),
    apiKey: config.get<string>("apiKey", "").trim(),
    enabledLanguages: config.get<string[]>("enabledLanguages", ["*"]),
    debounceMs: config.get<number>("debounceMs", 150),
    maxTokens: config.get<number>("maxTokens", 64),
    nextEdit: config.get<boolean>("nextEdit.enabled", false),
  };
}

const ICONS: Record<StatusKind, string> = {
  off: "$(circle-slash)",
  connecting: "$(sync~spin)",
  connected: "$(check)",
  busy: "$(loading~spin)",
  error: "$(warning)",
};

/** A suggestion handed to VS Code and not yet taken; the stable API has no "hidden" event. */
interface Shown {
  requestId: string;
  at: number;
}

class SpliceExtension implements vscode.Disposable {
  private settings = readSettings();
  private enabled: boolean;
  private client: SpliceClient | null = null;
  /** Why there is no client (an unusable server URL); shown in the status bar. */
  private configError: string | null = null;
  private readonly debouncer = new AdaptiveDebouncer({ baseMs: this.settings.debounceMs });
  private readonly telemetry: TelemetryReporter;
  private readonly statusBar = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private readonly shown = new Map<string, Shown>();
  private readonly disposables: vscode.Disposable[] = [];
  private readonly nextEditOld = vscode.window.createTextEditorDecorationType({
    textDecoration: "line-through",
    backgroundColor: new vscode.ThemeColor("diffEditor.removedTextBackground"),
  });
  private readonly nextEditNew = vscode.window.createTextEditorDecorationType({
    after: { color: new vscode.ThemeColor("editorGhostText.foreground"), fontStyle: "italic" },
  });
  private nextEditTimer: ReturnType<typeof setTimeout> | null = null;
  private nextEditAbort: AbortController | null = null;
  /** The suggestion shown, for the editor and document version it was made for. */
  private nextEditShown: { editor: vscode.TextEditor; edit: EditItem; version: number; uri: string } | null = null;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly output: vscode.LogOutputChannel,
  ) {
    this.enabled = context.globalState.get<boolean>(ENABLED_KEY, true);
    this.createClient();
    // Without a usable URL there is no client, hence no completions and no events to send.
    this.telemetry = new TelemetryReporter({
      baseUrl: this.client ? restBaseUrl(this.settings.serverUrl) : "",
      apiKey: this.settings.apiKey,
      log: (level, message) => this.log(level, `telemetry: ${message}`),
    });
    this.statusBar.command = "splice.toggle";
    this.statusBar.show();

    this.disposables.push(
      this.statusBar,
      vscode.languages.registerInlineCompletionItemProvider({ pattern: "**" }, this),
      vscode.workspace.onDidOpenTextDocument((doc) => this.track(doc)),
      vscode.workspace.onDidCloseTextDocument((doc) => this.untrack(doc)),
      vscode.workspace.onDidChangeTextDocument((event) => this.onChange(event)),
      vscode.workspace.onDidChangeConfiguration((event) => {
        if (event.affectsConfiguration("splice")) this.onSettingsChanged();
      }),
      vscode.commands.registerCommand("splice.toggle", () => this.toggle()),
      vscode.commands.registerCommand("splice.showLog", () => this.output.show()),
      vscode.commands.registerCommand("splice.compareWithServer", () => this.compareWithServer()),
      this.nextEditOld,
      this.nextEditNew,
      vscode.commands.registerCommand("splice.acceptNextEdit", () => this.acceptNextEdit()),
      vscode.commands.registerCommand("splice.dismissNextEdit", () => this.dismissNextEdit()),
      vscode.commands.registerCommand("splice.accepted", (requestId: string, index: number) =>
        this.accepted(requestId, index),
      ),
    );
    for (const doc of vscode.workspace.textDocuments) this.track(doc);
    if (this.enabled) this.client?.start();
    this.render();
  }

  // -- inline completions ------------------------------------------------------------------------

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    const client = this.client;
    const uri = document.uri.toString();
    if (!this.enabled || !client || !client.isOpen(uri)) return undefined;
    const abort = new AbortController();
    const subscription = token.onCancellationRequested(() => abort.abort());
    try {
      // Typing asks on every keystroke; wait for a pause. An explicit request goes at once.
      if (context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic) {
        if (!(await this.debouncer.wait(abort.signal))) return undefined;
      }
      const result = await client.complete(
        uri,
        { line: position.line, character: position.character },
        { maxTokens: this.settings.maxTokens },
        abort.signal,
      );
      this.debouncer.noteLatency(result.latencyMs);
      if (token.isCancellationRequested || result.items.length === 0) return undefined;
      this.replaceShown(uri, result.requestId);
      return result.items.map(
        (item, index) =>
          new vscode.InlineCompletionItem(
            item.text,
            new vscode.Range(item.range.start.line, item.range.start.character, item.range.end.line, item.range.end.character),
            { title: "Splice: suggestion accepted", command: "splice.accepted", arguments: [result.requestId, index] },
          ),
      );
    } catch (err) {
      if (!isCancelled(err)) this.log("warn", `completion for ${uri} failed: ${(err as Error).message}`);
      return undefined;
    } finally {
      subscription.dispose();
    }
  }

  // -- next-edit suggestions (splice.nextEdit.enabled) -------------------------------------------

  /** After an edit in the active editor and a pause, ask for the edit that should follow. */
  private scheduleNextEdit(document: vscode.TextDocument): void {
    this.dismissNextEdit();
    if (this.nextEditTimer !== null) clearTimeout(this.nextEditTimer);
    this.nextEditTimer = null;
    const editor = vscode.window.activeTextEditor;
    if (!this.enabled || !this.settings.nextEdit || !editor || editor.document !== document) return;
    this.nextEditTimer = setTimeout(() => void this.requestNextEdit(editor), NEXT_EDIT_PAUSE_MS);
  }

  private async requestNextEdit(editor: vscode.TextEditor): Promise<void> {
    const client = this.client;
    const uri = editor.document.uri.toString();
    if (!client || !client.isOpen(uri)) return;
    this.nextEditAbort?.abort();
    const abort = new AbortController();
    this.nextEditAbort = abort;
    const cursor = editor.selection.active;
    try {
      const result = await client.nextEdit(uri, { line: cursor.line, character: cursor.character }, {}, abort.signal);
      const edit = result.edits[0];
      if (!edit || abort.signal.aborted) return;
      this.nextEditShown = { editor, edit, version: result.version, uri };
      const range = toRange(edit.range);
      const shown = edit.text.replaceAll("\n", "⏎") || "(delete)";
      editor.setDecorations(this.nextEditOld, [range]);
      editor.setDecorations(this.nextEditNew, [
        { range: new vscode.Range(range.end.line, range.end.character, range.end.line, range.end.character), renderOptions: { after: { contentText: ` ${shown}  ⇥ Tab` } } },
      ]);
      void vscode.commands.executeCommand("setContext", NEXT_EDIT_CONTEXT, true);
    } catch (err) {
      if (!isCancelled(err)) this.log("warn", `next edit for ${uri} failed: ${(err as Error).message}`);
    }
  }

  private async acceptNextEdit(): Promise<void> {
    const shown = this.nextEditShown;
    if (!shown) return;
    this.dismissNextEdit();
    // The edit reaches the server as the ordinary change it makes (onDidChangeTextDocument).
    const applied = await shown.editor.edit((builder) => builder.replace(toRange(shown.edit.range), shown.edit.text));
    if (!applied) this.log("warn", `next edit for ${shown.uri} could not be applied`);
  }

  private dismissNextEdit(): void {
    this.nextEditAbort?.abort();
    this.nextEditAbort = null;
    const shown = this.nextEditShown;
    if (!shown) return;
    this.nextEditShown = null;
    shown.editor.setDecorations(this.nextEditOld, []);
    shown.editor.setDecorations(this.nextEditNew, []);
    void vscode.commands.executeCommand("setContext", NEXT_EDIT_CONTEXT, false);
  }

  // -- telemetry ---------------------------------------------------------------------------------

  /**
   * A new suggestion replaces the one shown for this document. VS Code's stable API says
   * neither when a suggestion is displayed nor when it goes away, so a suggestion counts as
   * viewed when it is handed over and as dismissed when a newer one (or closing the document)
   * replaces it without an accept.
   */
  private replaceShown(uri: string, requestId: string): void {
    this.dismissShown(uri);
    this.shown.set(uri, { requestId, at: Date.now() });
    this.telemetry.view(requestId);
  }

  private dismissShown(uri: string): void {
    const previous = this.shown.get(uri);
    if (!previous) return;
    this.shown.delete(uri);
    this.telemetry.dismiss(previous.requestId, Date.now() - previous.at);
  }

  private accepted(requestId: string, index: number): void {
    for (const [uri, entry] of this.shown) {
      if (entry.requestId !== requestId) continue;
      this.shown.delete(uri);
      this.telemetry.select(requestId, Date.now() - entry.at, index);
      return;
    }
    this.telemetry.select(requestId, undefined, index);
  }

  // -- documents ---------------------------------------------------------------------------------

  private wants(doc: vscode.TextDocument): boolean {
    const languages = this.settings.enabledLanguages;
    return TRACKED_SCHEMES.has(doc.uri.scheme) && (languages.includes("*") || languages.includes(doc.languageId));
  }

  private track(doc: vscode.TextDocument): void {
    if (!this.client || !this.wants(doc)) return;
    this.client.openDocument({ uri: doc.uri.toString(), languageId: doc.languageId, getText: () => doc.getText() });
  }

  private untrack(doc: vscode.TextDocument): void {
    const uri = doc.uri.toString();
    this.dismissShown(uri);
    this.client?.closeDocument(uri);
  }

  private onChange(event: vscode.TextDocumentChangeEvent): void {
    const uri = event.document.uri.toString();
    if (!this.client?.isOpen(uri) || event.contentChanges.length === 0) return;
    this.debouncer.noteTyping();
    // VS Code's order already satisfies the protocol: each change applies to the text the previous one left.
    const changes: TextChange[] = event.contentChanges.map((change) => ({
      range: {
        start: { line: change.range.start.line, character: change.range.start.character },
        end: { line: change.range.end.line, character: change.range.end.character },
      },
      text: change.text,
    }));
    this.client.changeDocument(uri, changes);
    this.scheduleNextEdit(event.document);
  }

  // -- settings and commands ---------------------------------------------------------------------

  private createClient(): void {
    try {
      this.client = new SpliceClient({
        url: this.settings.serverUrl,
        apiKey: this.settings.apiKey,
        apiKeyTransport: "header",
        createSocket: (url, headers) => new WebSocket(url, { headers, handshakeTimeout: 10_000 }),
        log: (level, message) => this.log(level, message),
      });
      this.configError = null;
    } catch (err) {
      this.client = null;
      this.configError = `splice.serverUrl: ${(err as Error).message}`;
      this.log("error", this.configError);
      return;
    }
    this.client.onStatus(() => this.render());
  }

  private onSettingsChanged(): void {
    const before = this.settings;
    this.settings = readSettings();
    this.debouncer.configure({ baseMs: this.settings.debounceMs });
    if (before.serverUrl !== this.settings.serverUrl || before.apiKey !== this.settings.apiKey) this.applyEndpoint();
    // Documents of languages just enabled start syncing, those just disabled stop.
    for (const doc of vscode.workspace.textDocuments) {
      const uri = doc.uri.toString();
      const open = this.client?.isOpen(uri) ?? false;
      if (this.wants(doc) && !open) this.track(doc);
      else if (!this.wants(doc) && open) this.untrack(doc);
    }
    this.render();
  }

  private applyEndpoint(): void {
    const { serverUrl, apiKey } = this.settings;
    if (this.client) {
      try {
        this.client.setEndpoint(serverUrl, apiKey);
      } catch (err) {
        // Drop the old connection: a mistyped URL must not quietly keep using the previous server.
        this.client.dispose();
        this.client = null;
        this.configError = `splice.serverUrl: ${(err as Error).message}`;
        this.log("error", this.configError);
      }
    } else {
      this.createClient();
    }
    if (!this.client) return;
    this.telemetry.setEndpoint(restBaseUrl(serverUrl), apiKey);
    if (this.enabled) this.client.start();
  }

  private async toggle(): Promise<void> {
    this.enabled = !this.enabled;
    await this.context.globalState.update(ENABLED_KEY, this.enabled);
    if (this.enabled) {
      this.client?.start();
    } else {
      this.debouncer.cancel();
      this.client?.stop();
    }
    this.render();
    void vscode.window.showInformationMessage(`Splice inline completions are ${this.enabled ? "on" : "off"}.`);
  }

  private async compareWithServer(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor || !this.client) {
      void vscode.window.showWarningMessage("Splice: open a file (and connect to a server) to compare it with the server's copy.");
      return;
    }
    const uri = editor.document.uri.toString();
    try {
      const report = await this.client.compareWithServer(uri);
      if (report.inSync) {
        void vscode.window.showInformationMessage(`Splice: the server's copy matches the editor (version ${report.clientVersion}).`);
        return;
      }
      const where = report.firstDifference
        ? `first difference at line ${report.firstDifference.line + 1}, column ${report.firstDifference.character + 1}`
        : "same text, different version";
      const message = `Splice: the server's copy differs (${where}; server version ${report.serverVersion}, editor version ${report.clientVersion}). Re-sending the document.`;
      this.log("warn", message);
      void vscode.window.showWarningMessage(message);
      this.track(editor.document);
    } catch (err) {
      void vscode.window.showErrorMessage(`Splice: could not compare with the server: ${(err as Error).message}`);
    }
  }

  // -- status bar and log ------------------------------------------------------------------------

  private render(): void {
    if (this.configError) {
      this.statusBar.text = `${ICONS.error} Splice: bad URL`;
      this.statusBar.tooltip = `${this.configError}\nFix it in Settings → Splice.`;
      this.statusBar.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
      return;
    }
    if (!this.client) return;
    const summary = describeStatus(this.client.status, this.enabled);
    this.statusBar.text = `${ICONS[summary.kind]} ${summary.text}`;
    this.statusBar.tooltip = `${summary.detail}\n\nClick to turn inline completions ${this.enabled ? "off" : "on"}.`;
    this.statusBar.backgroundColor =
      summary.kind === "error" ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
  }

  private log(level: LogLevel, message: string): void {
    if (level === "debug") this.output.debug(message);
    else if (level === "info") this.output.info(message);
    else if (level === "warn") this.output.warn(message);
    else this.output.error(message);
  }

  async dispose(): Promise<void> {
    if (this.nextEditTimer !== null) clearTimeout(this.nextEditTimer);
    this.dismissNextEdit();
    for (const uri of [...this.shown.keys()]) this.dismissShown(uri);
    for (const disposable of this.disposables) disposable.dispose();
    this.client?.dispose();
    await this.telemetry.dispose();
  }
}

function toRange(range: EditItem["range"]): vscode.Range {
  return new vscode.Range(range.start.line, range.start.character, range.end.line, range.end.character);
}

let extension: SpliceExtension | null = null;

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel("Splice", { log: true });
  context.subscriptions.push(output);
  extension = new SpliceExtension(context, output);
}

export async function deactivate(): Promise<void> {
  await extension?.dispose();
  extension = null;
}
