"""What an editor does, for tests: keep a text, make random LSP edits with UTF-16 positions.

Positions are computed here independently of the server's code: by encoding the line to
UTF-16 and counting code units, as VS Code's strings do natively.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Characters random edits are drawn from: ASCII code, CR/LF, BMP letters, astral characters
# (surrogate pairs in UTF-16), combining marks.
ALPHABET = [*"abcXYZ_ ():=\t'\"#", "\n", "\r\n", "\r", "é", "中", "😀", "𝔘", "\u0301", "    "]


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def lsp_position(text: str, offset: int) -> dict[str, int]:
    """{line, character} of a code-point offset, LSP style (\\r\\n, \\r, \\n end lines)."""
    line, start = 0, 0
    for m in LINE_BREAK.finditer(text):
        if m.end() > offset:
            break
        line, start = line + 1, m.end()
    return {"line": line, "character": utf16_len(text[start:offset])}


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def _boundary(text: str, offset: int) -> int:
    """Editors never put a cursor between \\r and \\n: move off such an offset."""
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        return offset - 1
    return offset


@dataclass
class EditorDocument:
    uri: str
    text: str
    version: int = 1
    language_id: str = "python"
    history: list[str] = field(default_factory=list)

    def open_message(self) -> dict[str, Any]:
        return {
            "type": "open",
            "uri": self.uri,
            "languageId": self.language_id,
            "version": self.version,
            "text": self.text,
        }

    def random_change(self, rng: random.Random, max_ranges: int = 3) -> dict[str, Any]:
        """Apply 1..max_ranges random edits (insert / delete / replace) and return the `change`
        message that describes them, each range against the text the previous one left."""
        changes = []
        for _ in range(rng.randint(1, max_ranges)):
            n = len(self.text)
            a = _boundary(self.text, rng.randint(0, n))
            kind = rng.random()
            if kind < 0.4 or n == 0:  # insert
                b, new = a, random_text(rng, rng.randint(1, 12))
            elif kind < 0.7:  # delete
                b, new = _boundary(self.text, min(n, a + rng.randint(1, 20))), ""
            else:  # replace
                b, new = (
                    _boundary(self.text, min(n, a + rng.randint(1, 20))),
                    random_text(rng, rng.randint(1, 8)),
                )
            # Inserting right after a \r something starting with \n would merge line breaks in
            # ways an editor normalises; real editors do produce it, so keep it: it is valid.
            changes.append(
                {
                    "range": {"start": lsp_position(self.text, a), "end": lsp_position(self.text, b)},
                    "text": new,
                }
            )
            self.text = self.text[:a] + new + self.text[b:]
        self.version += 1
        return {"type": "change", "uri": self.uri, "version": self.version, "changes": changes}
