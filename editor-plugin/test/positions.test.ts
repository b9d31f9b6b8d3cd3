import { describe, expect, it } from "vitest";
import {
  applyChanges,
  firstDifference,
  lineStarts,
  offsetAt,
  PositionError,
  positionAt,
} from "../src/core/positions.js";

const pos = (line: number, character: number) => ({ line, character });

describe("lineStarts", () => {
  it("ends lines at \\n, \\r\\n and a lone \\r", () => {
    expect(lineStarts("")).toEqual([0]);
    expect(lineStarts("a\nb\r\nc\rd")).toEqual([0, 2, 5, 7]);
    expect(lineStarts("\r\n\r\n")).toEqual([0, 2, 4]);
    expect(lineStarts("\n\r")).toEqual([0, 1, 2]); // \n\r is two line ends, not one
    expect(lineStarts("x\n")).toEqual([0, 2]); // a final newline opens an empty last line
  });
});

describe("offsetAt / positionAt", () => {
  const text = "ab\r\ncd\ref\n😀x\n";

  it("round-trips every valid offset", () => {
    const valid = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14];
    for (const offset of valid) {
      expect(offsetAt(text, positionAt(text, offset))).toBe(offset);
    }
  });

  it("counts characters in UTF-16 code units", () => {
    expect(offsetAt(text, pos(3, 0))).toBe(10);
    expect(offsetAt(text, pos(3, 2))).toBe(12); // after the emoji: two code units
    expect(positionAt(text, 13)).toEqual(pos(3, 3));
    expect(offsetAt(text, pos(4, 0))).toBe(14); // the empty last line
  });

  it("allows the end of a line, before its terminator", () => {
    expect(offsetAt(text, pos(0, 2))).toBe(2);
    expect(offsetAt(text, pos(1, 2))).toBe(6);
    expect(positionAt(text, 2)).toEqual(pos(0, 2));
  });

  it("refuses a position past the end of a line", () => {
    expect(() => offsetAt(text, pos(0, 3))).toThrow(/character 3 is past the end of line 0 \(it has 2 UTF-16 code units\)/);
    expect(() => offsetAt(text, pos(1, 3))).toThrow(PositionError);
    expect(() => offsetAt(text, pos(4, 1))).toThrow(/past the end of line 4/);
  });

  it("refuses a line past the end of the document", () => {
    expect(() => offsetAt(text, pos(5, 0))).toThrow(/line 5 is past the end of the document \(it has 5 lines\)/);
    expect(() => offsetAt("", pos(1, 0))).toThrow(/it has 1 line\)/);
  });

  it("refuses a position inside a surrogate pair", () => {
    const err = (() => {
      try {
        offsetAt(text, pos(3, 1));
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(PositionError);
    expect((err as PositionError).reason).toBe("inside_surrogate_pair");
    expect(() => positionAt(text, 11)).toThrow(/surrogate pair/);
  });

  it("refuses an offset inside \\r\\n or outside the text", () => {
    expect(() => positionAt(text, 3)).toThrow(/inside the \\r\\n that ends line 0/);
    expect(() => positionAt(text, -1)).toThrow(PositionError);
    expect(() => positionAt(text, text.length + 1)).toThrow(/outside the document/);
    expect(positionAt(text, text.length)).toEqual(pos(4, 0));
  });

  it("refuses negative and fractional coordinates", () => {
    expect(() => offsetAt(text, pos(-1, 0))).toThrow(/non-negative integer/);
    expect(() => offsetAt(text, pos(0, 0.5))).toThrow(/non-negative integer/);
  });
});

describe("applyChanges", () => {
  it("applies changes one after another, each against the previous result", () => {
    const text = "def f():\r\n    pass\n";
    const result = applyChanges(text, [
      { range: { start: pos(1, 4), end: pos(1, 8) }, text: "return 1" },
      { range: { start: pos(0, 4), end: pos(0, 5) }, text: "😀" },
      { range: { start: pos(0, 7), end: pos(0, 7) }, text: "x" }, // the emoji counts two units
    ]);
    expect(result).toBe("def 😀(x):\r\n    return 1\n");
  });

  it("replaces across line ends of every kind", () => {
    expect(applyChanges("a\r\nb\rc\nd", [{ range: { start: pos(0, 1), end: pos(3, 0) }, text: "-" }])).toBe("a-d");
  });

  it("refuses a reversed range and an invalid position", () => {
    expect(() => applyChanges("abc", [{ range: { start: pos(0, 2), end: pos(0, 1) }, text: "" }])).toThrow(
      /change 0: range end .* is before its start/,
    );
    expect(() => applyChanges("abc", [{ range: { start: pos(0, 4), end: pos(0, 4) }, text: "" }])).toThrow(PositionError);
  });
});

describe("firstDifference", () => {
  it("names the first differing position in the first text", () => {
    expect(firstDifference("abc", "abc")).toBeNull();
    expect(firstDifference("ab\ncd", "ab\ncX")).toEqual(pos(1, 1));
    expect(firstDifference("ab", "abc")).toEqual(pos(0, 2));
    expect(firstDifference("ab\r\nc", "ab\rc")).toEqual(pos(0, 2)); // not inside the \r\n
    expect(firstDifference("😀", "😃")).toEqual(pos(0, 0)); // not inside the pair
  });
});
