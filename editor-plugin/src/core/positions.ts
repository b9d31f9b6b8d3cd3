/**
 * LSP positions over plain strings.
 *
 * The editor protocol names places in a document as `{line, character}`: both 0-based, the
 * character counted in UTF-16 code units (what JavaScript string indices already are), lines
 * ending at `\n`, `\r\n` or `\r`. The server refuses a position past the end of a line or of
 * the document, or one that splits a surrogate pair; these functions follow the same rules
 * (throwing PositionError rather than guessing a nearby valid place), so the client's notion of
 * where an edit or a difference lies is the server's.
 */

import type { Position, TextChange } from "./protocol.js";

/** A position that does not name a place in the text; `reason` says which rule it broke. */
export class PositionError extends Error {
  constructor(
    message: string,
    readonly reason: "line_out_of_range" | "character_out_of_range" | "inside_surrogate_pair" | "not_an_integer",
  ) {
    super(message);
    this.name = "PositionError";
  }
}

/** Offsets (UTF-16 indices) where each line starts; a text always has at least one line. */
export function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0d) {
      if (text.charCodeAt(i + 1) === 0x0a) i++; // \r\n ends one line, not two
      starts.push(i + 1);
    } else if (c === 0x0a) {
      starts.push(i + 1);
    }
  }
  return starts;
}

/** Offset just past the last character of `line`, before its terminator. */
function lineContentEnd(text: string, starts: readonly number[], line: number): number {
  if (line + 1 >= starts.length) return text.length;
  const next = starts[line + 1]!;
  return text.charCodeAt(next - 1) === 0x0a && text.charCodeAt(next - 2) === 0x0d ? next - 2 : next - 1;
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

function isLowSurrogate(code: number): boolean {
  return code >= 0xdc00 && code <= 0xdfff;
}

/** True when `offset` falls between the two halves of one surrogate pair. */
function splitsSurrogatePair(text: string, offset: number): boolean {
  return (
    offset > 0 &&
    offset < text.length &&
    isHighSurrogate(text.charCodeAt(offset - 1)) &&
    isLowSurrogate(text.charCodeAt(offset))
  );
}

/** The UTF-16 offset of `position` in `text`; throws PositionError when it names no place. */
export function offsetAt(text: string, position: Position, starts: readonly number[] = lineStarts(text)): number {
  const { line, character } = position;
  if (!Number.isInteger(line) || !Number.isInteger(character) || line < 0 || character < 0) {
    throw new PositionError(
      `position ${describe(position)} must have non-negative integer line and character`,
      "not_an_integer",
    );
  }
  if (line >= starts.length) {
    throw new PositionError(
      `line ${line} is past the end of the document (it has ${starts.length} line${starts.length === 1 ? "" : "s"})`,
      "line_out_of_range",
    );
  }
  const start = starts[line]!;
  const length = lineContentEnd(text, starts, line) - start;
  if (character > length) {
    throw new PositionError(
      `character ${character} is past the end of line ${line} (it has ${length} UTF-16 code units)`,
      "character_out_of_range",
    );
  }
  const offset = start + character;
  if (splitsSurrogatePair(text, offset)) {
    throw new PositionError(
      `position ${describe(position)} falls inside a surrogate pair (one character, two UTF-16 code units)`,
      "inside_surrogate_pair",
    );
  }
  return offset;
}

/**
 * The position of UTF-16 `offset` in `text`. Offsets inside a `\r\n` terminator or inside a
 * surrogate pair name no position and throw, like offsets outside `[0, text.length]`.
 */
export function positionAt(text: string, offset: number, starts: readonly number[] = lineStarts(text)): Position {
  if (!Number.isInteger(offset) || offset < 0 || offset > text.length) {
    throw new PositionError(
      `offset ${offset} is outside the document (0..${text.length})`,
      offset > text.length ? "line_out_of_range" : "not_an_integer",
    );
  }
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= offset) lo = mid;
    else hi = mid - 1;
  }
  const character = offset - starts[lo]!;
  if (offset > lineContentEnd(text, starts, lo)) {
    throw new PositionError(`offset ${offset} falls inside the \\r\\n that ends line ${lo}`, "character_out_of_range");
  }
  if (splitsSurrogatePair(text, offset)) {
    throw new PositionError(`offset ${offset} falls inside a surrogate pair`, "inside_surrogate_pair");
  }
  return { line: lo, character };
}

/**
 * Apply LSP changes one after another, each against the text the previous one left; throws
 * PositionError (and changes nothing) when any range is invalid or has its end before its start.
 * This is the server's semantics for a `change` message, kept here as the reference the tests
 * rebuild documents with.
 */
export function applyChanges(text: string, changes: readonly TextChange[]): string {
  let result = text;
  for (const [index, change] of changes.entries()) {
    const starts = lineStarts(result);
    const start = offsetAt(result, change.range.start, starts);
    const end = offsetAt(result, change.range.end, starts);
    if (end < start) {
      throw new PositionError(
        `change ${index}: range end ${describe(change.range.end)} is before its start ${describe(change.range.start)}`,
        "character_out_of_range",
      );
    }
    result = result.slice(0, start) + change.text + result.slice(end);
  }
  return result;
}

/**
 * Where two texts first differ, as a position in `a` (null when they are equal). Used to
 * explain a sync mismatch between the editor and the server in words a user can act on.
 */
export function firstDifference(a: string, b: string): Position | null {
  if (a === b) return null;
  let i = 0;
  const n = Math.min(a.length, b.length);
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i > 0 && i < a.length && isLowSurrogate(a.charCodeAt(i)) && isHighSurrogate(a.charCodeAt(i - 1))) i--;
  const starts = lineStarts(a);
  // Step back out of a \r\n when the texts differ between its two halves.
  if (i > 0 && a.charCodeAt(i - 1) === 0x0d && a.charCodeAt(i) === 0x0a) i--;
  return positionAt(a, i, starts);
}

function describe(p: Position): string {
  return `{line: ${p.line}, character: ${p.character}}`;
}
