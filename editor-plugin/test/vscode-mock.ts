/**
 * The slice of the `vscode` API that src/extension.ts uses, recorded so tests can drive the
 * extension like VS Code would: fire document events, call the registered provider and
 * commands, read the status bar. vitest aliases the `vscode` module to this file.
 */

type Listener<T> = (event: T) => void;

class EventSource<T> {
  private readonly listeners = new Set<Listener<T>>();
  readonly event = (listener: Listener<T>): { dispose(): void } => {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  };
  fire(event: T): void {
    for (const listener of this.listeners) listener(event);
  }
}

export class Position {
  constructor(
    readonly line: number,
    readonly character: number,
  ) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(startLine: number, startCharacter: number, endLine: number, endCharacter: number) {
    this.start = new Position(startLine, startCharacter);
    this.end = new Position(endLine, endCharacter);
  }
}

export class InlineCompletionItem {
  constructor(
    readonly insertText: string,
    readonly range: Range,
    readonly command?: { title: string; command: string; arguments?: unknown[] },
  ) {}
}

export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}

export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}

export class ThemeColor {
  constructor(readonly id: string) {}
}

export class CancellationTokenSource {
  private readonly cancelled = new EventSource<void>();
  readonly token = {
    isCancellationRequested: false,
    onCancellationRequested: this.cancelled.event,
  };
  cancel(): void {
    this.token.isCancellationRequested = true;
    this.cancelled.fire();
  }
}

/** A text document whose text the test edits. */
export class MockDocument {
  constructor(
    readonly uri: { scheme: string; toString(): string },
    public languageId: string,
    public text: string,
  ) {}
  getText(): string {
    return this.text;
  }
}

/** An editor showing `document`: its decorations by type and the replacements `edit` made. */
export class MockEditor {
  readonly decorations = new Map<object, unknown[]>();
  readonly edits: { range: Range; text: string }[] = [];
  selection: { active: Position };
  constructor(
    readonly document: MockDocument,
    cursor = new Position(0, 0),
  ) {
    this.selection = { active: cursor };
  }
  setDecorations(type: object, ranges: unknown[]): void {
    this.decorations.set(type, ranges);
  }
  async edit(build: (builder: { replace(range: Range, text: string): void }) => void): Promise<boolean> {
    build({ replace: (range, text) => void this.edits.push({ range, text }) });
    return true;
  }
}

export function documentAt(uri: string, languageId: string, text: string): MockDocument {
  const scheme = uri.slice(0, uri.indexOf(":"));
  return new MockDocument({ scheme, toString: () => uri }, languageId, text);
}

// -- recorded state ------------------------------------------------------------------------------

export const state = {
  settings: new Map<string, unknown>(),
  documents: [] as MockDocument[],
  commands: new Map<string, (...args: unknown[]) => unknown>(),
  provider: null as null | {
    provideInlineCompletionItems(...args: unknown[]): Promise<InlineCompletionItem[] | undefined>;
  },
  statusBar: { text: "", tooltip: "", command: "", backgroundColor: undefined as ThemeColor | undefined, visible: false },
  messages: [] as string[],
  log: [] as string[],
  globalState: new Map<string, unknown>(),
  activeTextEditor: undefined as undefined | MockEditor,
  /** `setContext` keys the extension set (`when` clauses of its keybindings). */
  contexts: new Map<string, unknown>(),
  events: {
    open: new EventSource<MockDocument>(),
    close: new EventSource<MockDocument>(),
    change: new EventSource<{ document: MockDocument; contentChanges: { range: Range; text: string }[] }>(),
    configuration: new EventSource<{ affectsConfiguration(section: string): boolean }>(),
  },
};

export function resetState(): void {
  state.settings.clear();
  state.documents.length = 0;
  state.commands.clear();
  state.provider = null;
  state.statusBar = { text: "", tooltip: "", command: "", backgroundColor: undefined, visible: false };
  state.messages.length = 0;
  state.log.length = 0;
  state.globalState.clear();
  state.activeTextEditor = undefined;
  state.contexts.clear();
  state.events = {
    open: new EventSource(),
    close: new EventSource(),
    change: new EventSource(),
    configuration: new EventSource(),
  };
}

export function extensionContext() {
  return {
    subscriptions: [] as { dispose(): void }[],
    globalState: {
      get: <T>(key: string, fallback: T): T => (state.globalState.has(key) ? (state.globalState.get(key) as T) : fallback),
      update: async (key: string, value: unknown) => void state.globalState.set(key, value),
    },
  };
}

// -- the API -------------------------------------------------------------------------------------

const disposable = { dispose: () => undefined };

export const workspace = {
  getConfiguration: (section: string) => ({
    get: <T>(key: string, fallback: T): T => {
      const full = `${section}.${key}`;
      return state.settings.has(full) ? (state.settings.get(full) as T) : fallback;
    },
  }),
  get textDocuments() {
    return state.documents;
  },
  onDidOpenTextDocument: (l: Listener<MockDocument>) => state.events.open.event(l),
  onDidCloseTextDocument: (l: Listener<MockDocument>) => state.events.close.event(l),
  onDidChangeTextDocument: (l: Listener<{ document: MockDocument; contentChanges: { range: Range; text: string }[] }>) =>
    state.events.change.event(l),
  onDidChangeConfiguration: (l: Listener<{ affectsConfiguration(section: string): boolean }>) =>
    state.events.configuration.event(l),
};

export const window = {
  createTextEditorDecorationType: (options: unknown) => ({ options, dispose: () => undefined }),
  createStatusBarItem: () => {
    const item = state.statusBar;
    return Object.assign(item, {
      show: () => void (item.visible = true),
      dispose: () => void (item.visible = false),
    });
  },
  createOutputChannel: () => ({
    debug: (m: string) => state.log.push(`debug: ${m}`),
    info: (m: string) => state.log.push(`info: ${m}`),
    warn: (m: string) => state.log.push(`warn: ${m}`),
    error: (m: string) => state.log.push(`error: ${m}`),
    show: () => undefined,
    dispose: () => undefined,
  }),
  showInformationMessage: async (m: string) => void state.messages.push(`info: ${m}`),
  showWarningMessage: async (m: string) => void state.messages.push(`warning: ${m}`),
  showErrorMessage: async (m: string) => void state.messages.push(`error: ${m}`),
  get activeTextEditor() {
    return state.activeTextEditor;
  },
};

export const languages = {
  registerInlineCompletionItemProvider: (_selector: unknown, provider: NonNullable<typeof state.provider>) => {
    state.provider = provider;
    return disposable;
  },
};

export const commands = {
  executeCommand: async (name: string, ...args: unknown[]) => {
    if (name === "setContext") state.contexts.set(args[0] as string, args[1]);
  },
  registerCommand: (name: string, run: (...args: unknown[]) => unknown) => {
    state.commands.set(name, run);
    return { dispose: () => state.commands.delete(name) };
  },
};
