import { describe, expect, it } from "vitest";
import { parseServerMessage, ProtocolError } from "../src/core/protocol.js";

describe("parseServerMessage", () => {
  it("accepts every server message of the README", () => {
    const range = { start: { line: 1, character: 4 }, end: { line: 1, character: 4 } };
    expect(
      parseServerMessage(
        JSON.stringify({ type: "completion", requestId: "r1", uri: "u", version: 2, items: [{ text: "x", range }], usage: {}, timings: {} }),
      ),
    ).toMatchObject({ type: "completion", requestId: "r1", items: [{ text: "x" }] });
    expect(parseServerMessage('{"type":"error","code":"queue_full","message":"busy","requestId":7}')).toMatchObject({
      code: "queue_full",
      requestId: 7,
    });
    expect(parseServerMessage('{"type":"resync","uri":"u","expectedVersion":null,"reason":"unknown_document"}')).toMatchObject({
      expectedVersion: null,
    });
    expect(parseServerMessage('{"type":"document","uri":"u","version":3,"languageId":"python","text":"t"}')).toMatchObject({
      version: 3,
    });
    expect(parseServerMessage('{"type":"pong"}')).toEqual({ type: "pong" });
    const window = { start: { line: 0, character: 0 }, end: { line: 3, character: 0 } };
    expect(
      parseServerMessage(
        JSON.stringify({ type: "nextEditResult", requestId: 4, uri: "u", version: 2, window, edits: [{ text: "y", range }] }),
      ),
    ).toMatchObject({ type: "nextEditResult", requestId: "4", edits: [{ text: "y" }] });
  });

  it("says what is wrong with a bad frame", () => {
    expect(() => parseServerMessage("{")).toThrow(ProtocolError);
    expect(() => parseServerMessage("[1]")).toThrow(/expected a JSON object/);
    expect(() => parseServerMessage('{"type":"hello"}')).toThrow(/unknown type "hello"/);
    expect(() =>
      parseServerMessage('{"type":"nextEditResult","requestId":"r","uri":"u","version":1,"window":{},"edits":[]}'),
    ).toThrow(/field "window" must be a range/);
    expect(() => parseServerMessage('{"type":"resync","uri":"u","expectedVersion":"2","reason":"x"}')).toThrow(
      /"resync" message: field "expectedVersion" must be an integer or null, got "2"/,
    );
    expect(() =>
      parseServerMessage('{"type":"completion","requestId":"r","uri":"u","version":1,"items":[{"text":"x"}]}'),
    ).toThrow(/field "items" must be an array of \{text, range\}/);
  });
});
