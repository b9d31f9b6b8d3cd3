/**
 * The editor protocol of `WS /v1/documents` (README, "Editor protocol"), as TypeScript types.
 *
 * Every message is one JSON object with a `type`. The client keeps the server's copy of each
 * open document in sync with edits and then asks for completions by document and cursor.
 * {@link parseServerMessage} is the one place where an incoming frame is checked, so the rest
 * of the client can trust the shapes below.
 */

/** 0-based line and character; `character` counts UTF-16 code units. */
export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

/** One edit; a `change` message applies its edits one after another (LSP semantics). */
export interface TextChange {
  range: Range;
  text: string;
}

export type RequestId = string;

// -- client → server ---------------------------------------------------------------------------

/** Start tracking a document, or replace its text (also the answer to `resync`). */
export interface OpenMessage {
  type: "open";
  uri: string;
  languageId: string;
  version: number;
  text: string;
}

/** Edits; `version` must be exactly the server's version + 1. */
export interface ChangeMessage {
  type: "change";
  uri: string;
  version: number;
  changes: TextChange[];
}

/** Ask for a completion at `position`; a newer one for the same document cancels this one. */
export interface CompleteMessage {
  type: "complete";
  uri: string;
  position: Position;
  requestId: RequestId;
  maxTokens?: number;
  temperature?: number;
  /** When given, the server refuses (`version_mismatch`) unless its copy has this version. */
  version?: number;
}

/**
 * Ask for a next-edit suggestion: a rewrite of the lines around `position` that follows from the
 * edits just made, answered with `nextEditResult`. A newer one for the same document cancels this
 * one; asking never changes the server's copy of the document.
 */
export interface NextEditMessage {
  type: "nextEdit";
  uri: string;
  position: Position;
  requestId: RequestId;
  /** Lines of the window above and below the cursor's line (0..20 each, default 5). */
  linesBefore?: number;
  linesAfter?: number;
  maxTokens?: number;
  version?: number;
}

export interface CancelMessage {
  type: "cancel";
  requestId: RequestId;
}

export interface CloseMessage {
  type: "close";
  uri: string;
}

/** Debug: ask for the server's copy of a document, answered with `document`. */
export interface GetMessage {
  type: "get";
  uri: string;
}

export interface PingMessage {
  type: "ping";
  id?: string | number;
}

export type ClientMessage =
  | OpenMessage
  | ChangeMessage
  | CompleteMessage
  | NextEditMessage
  | CancelMessage
  | CloseMessage
  | GetMessage
  | PingMessage;

// -- server → client ---------------------------------------------------------------------------

export interface CompletionItem {
  text: string;
  /** Where `text` goes; start = end = the cursor. */
  range: Range;
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  encoded_prompt_tokens: number;
  reused_prompt_tokens: number;
  refreshed_prompt_tokens?: number; // kept tokens re-encoded against drift (part of encoded_prompt_tokens)
  tokenized_chars?: number;
  decode_passes?: number; // forward passes after the prompt's (fewer than tokens when drafts were accepted)
  accepted_draft_tokens?: number;
}

export interface CompletionTimings {
  queue_ms?: number;
  prompt_ms?: number;
  first_token_ms?: number;
  total_ms?: number;
}

/** The suggestion for the document at `version`; `items` is empty when there is none. */
export interface CompletionMessage {
  type: "completion";
  requestId: RequestId;
  uri: string;
  version: number;
  items: CompletionItem[];
  finishReason?: string;
  usage?: CompletionUsage;
  timings?: CompletionTimings;
}

/** One replacement in the document: `range` (in the version the suggestion was made for) becomes `text`. */
export interface EditItem {
  range: Range;
  text: string;
}

/** The suggestion for the document at `version`: `edits` is empty when nothing should change. */
export interface NextEditResultMessage {
  type: "nextEditResult";
  requestId: RequestId;
  uri: string;
  version: number;
  /** The lines that were rewritten (whole lines: character 0 to character 0). */
  window: Range;
  edits: EditItem[];
  finishReason?: string;
  usage?: CompletionUsage;
  timings?: CompletionTimings;
}

export type ErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "unknown_type"
  | "unknown_document"
  | "resync_pending"
  | "version_mismatch"
  | "too_many_documents"
  | "message_too_large"
  | "document_too_large"
  | "rate_limited"
  | "queue_full"
  | "cancelled"
  | "unauthorized"
  | "out_of_range"
  | "window_too_large"
  | "internal";

export interface ErrorMessage {
  type: "error";
  requestId?: RequestId | number;
  uri?: string;
  /** One of {@link ErrorCode}; kept open so a newer server's codes still reach the user. */
  code: ErrorCode | (string & {});
  message: string;
}

export type ResyncReason =
  | "version_gap"
  | "out_of_range"
  | "unknown_document"
  | "invalid_change"
  | "rate_limited"
  | "too_large";

/** The server did not apply a change; the client answers with `open` and its full text. */
export interface ResyncMessage {
  type: "resync";
  uri: string;
  /** The version the server wanted; null for a document it does not know. */
  expectedVersion: number | null;
  reason: ResyncReason | (string & {});
  message?: string;
}

export interface DocumentMessage {
  type: "document";
  uri: string;
  version: number;
  languageId: string;
  text: string;
}

export interface PongMessage {
  type: "pong";
  id?: string | number;
}

export type ServerMessage =
  | CompletionMessage
  | NextEditResultMessage
  | ErrorMessage
  | ResyncMessage
  | DocumentMessage
  | PongMessage;

/** An incoming frame that is not a message of this protocol; the text says what was wrong. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

type Json = Record<string, unknown>;

function field<T>(obj: Json, name: string, kind: string, check: (v: unknown) => v is T, optional = false): void {
  const value = obj[name];
  if (value === undefined && optional) return;
  if (!check(value)) {
    throw new ProtocolError(`"${String(obj["type"])}" message: field "${name}" must be ${kind}, got ${JSON.stringify(value)}`);
  }
}

const isString = (v: unknown): v is string => typeof v === "string";
const isInt = (v: unknown): v is number => Number.isInteger(v);
const isId = (v: unknown): v is string | number => typeof v === "string" || Number.isInteger(v);
const isIntOrNull = (v: unknown): v is number | null => v === null || Number.isInteger(v);
const isArray = (v: unknown): v is unknown[] => Array.isArray(v);
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

function isPosition(v: unknown): v is Position {
  return isObject(v) && isInt(v["line"]) && isInt(v["character"]);
}

function isRange(v: unknown): v is Range {
  return isObject(v) && isPosition(v["start"]) && isPosition(v["end"]);
}

function isItem(v: unknown): v is CompletionItem {
  return (
    isObject(v) &&
    isString(v["text"]) &&
    isObject(v["range"]) &&
    isPosition(v["range"]["start"]) &&
    isPosition(v["range"]["end"])
  );
}

/** Parse and check one frame from the server; throws ProtocolError naming what is wrong. */
export function parseServerMessage(raw: string): ServerMessage {
  let obj: unknown;
  try {
    obj = JSON.parse(raw);
  } catch (err) {
    throw new ProtocolError(`server sent a frame that is not JSON (${(err as Error).message}): ${raw.slice(0, 120)}`);
  }
  if (!isObject(obj)) throw new ProtocolError(`server sent ${raw.slice(0, 120)}, expected a JSON object`);
  switch (obj["type"]) {
    case "completion":
      field(obj, "requestId", "a string or integer", isId);
      field(obj, "uri", "a string", isString);
      field(obj, "version", "an integer", isInt);
      field(obj, "items", "an array of {text, range}", (v): v is CompletionItem[] => isArray(v) && v.every(isItem));
      field(obj, "finishReason", "a string", isString, true);
      break;
    case "nextEditResult":
      field(obj, "requestId", "a string or integer", isId);
      field(obj, "uri", "a string", isString);
      field(obj, "version", "an integer", isInt);
      field(obj, "window", "a range", isRange);
      field(obj, "edits", "an array of {range, text}", (v): v is EditItem[] => isArray(v) && v.every(isItem));
      field(obj, "finishReason", "a string", isString, true);
      break;
    case "error":
      field(obj, "code", "a string", isString);
      field(obj, "message", "a string", isString);
      field(obj, "requestId", "a string or integer", isId, true);
      field(obj, "uri", "a string", isString, true);
      break;
    case "resync":
      field(obj, "uri", "a string", isString);
      field(obj, "expectedVersion", "an integer or null", isIntOrNull);
      field(obj, "reason", "a string", isString);
      break;
    case "document":
      field(obj, "uri", "a string", isString);
      field(obj, "version", "an integer", isInt);
      field(obj, "languageId", "a string", isString);
      field(obj, "text", "a string", isString);
      break;
    case "pong":
      field(obj, "id", "a string or integer", isId, true);
      break;
    default:
      throw new ProtocolError(`server sent a message of unknown type ${JSON.stringify(obj["type"])}`);
  }
  const message = obj as unknown as ServerMessage;
  if (message.type === "completion" || message.type === "nextEditResult") message.requestId = String(message.requestId);
  return message;
}
