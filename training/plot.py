"""A small PNG of the loss curves, drawn without a plotting library (none is a dependency).

Training loss per step in grey, held-out loss in blue (dots joined), on shared axes; the axis
ends are labelled with a 3x5 pixel digit font. Good enough to see a curve's shape in a model card.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

_W, _H, _M = 480, 300, 36  # width, height, margin (pixels)
_FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "k": (4, 5, 6, 5, 5),
}  # fmt: skip

Color = tuple[int, int, int]


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = (py * self.width + px) * 3
                    self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, size: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            self.dot(round(x0 + (x1 - x0) * s / steps), round(y0 + (y1 - y0) * s / steps), color, size)

    def text(self, x: int, y: int, text: str, color: Color = (0, 0, 0), scale: int = 2) -> None:
        for n, ch in enumerate(text):
            for row, bits in enumerate(_FONT.get(ch, (0,) * 5)):
                for col in range(3):
                    if bits >> (2 - col) & 1:
                        self.dot(x + (n * 4 + col) * scale, y + row * scale, color, scale)

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.0f}k"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def write_loss_plot(
    path: Path, history: Sequence[dict[str, float]], evals: Sequence[dict[str, float]]
) -> None:
    """Training loss (grey) and held-out loss (blue) against the step."""
    canvas = _Canvas(_W, _H)
    points = [(h["step"], h["loss"]) for h in history] + [(e["step"], e["heldout_loss"]) for e in evals]
    if not points:
        path.write_bytes(canvas.png())
        return
    max_step = max(max(p[0] for p in points), 1)
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    high = high if high > low else low + 1.0

    def xy(step: float, loss: float) -> tuple[int, int]:
        x = _M + (step / max_step) * (_W - 2 * _M)
        y = _H - _M - (loss - low) / (high - low) * (_H - 2 * _M)
        return round(x), round(y)

    axis: Color = (60, 60, 60)
    canvas.line(_M, _H - _M, _W - _M, _H - _M, axis)
    canvas.line(_M, _M, _M, _H - _M, axis)
    canvas.text(4, _M - 5, _label(high))
    canvas.text(4, _H - _M - 5, _label(low))
    canvas.text(_M, _H - _M + 8, "0")
    canvas.text(_W - _M - 16, _H - _M + 8, _label(max_step))
    train = [xy(h["step"], h["loss"]) for h in history]
    for a, b in itertools.pairwise(train):
        canvas.line(*a, *b, (170, 170, 170))
    held = [xy(e["step"], e["heldout_loss"]) for e in evals]
    for a, b in itertools.pairwise(held):
        canvas.line(*a, *b, (30, 90, 200), 2)
    for x, y in held:
        canvas.dot(x - 2, y - 2, (30, 90, 200), 5)
    path.write_bytes(canvas.png())
