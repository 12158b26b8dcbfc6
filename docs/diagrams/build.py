"""Draw the docs' diagrams: each `docs/diagrams/<name>.yaml` becomes `<name>.svg`.

Run it after changing a source (the test suite fails while an SVG is older than its source):

    .venv/bin/python docs/diagrams/build.py           # write every SVG
    .venv/bin/python docs/diagrams/build.py --check   # exit 1 naming the stale ones

Pure Python (PyYAML, which bus-core needs anyway). Two kinds of source:

`kind: flow`: boxes on a grid, arrows between them.

    columns: 2
    nodes:
      - {id: fire, row: 0, col: 0, span: 2, text: "fire()", style: start}
    edges:
      - {from: fire, to: pending, label: "XADD"}
      - {from: handler, to: pending, route: right}     # around the right side, no label

`kind: sequence`: participants side by side, messages going down in time.

    participants: [{id: caller, text: Caller}, {id: redis, text: Redis}]
    steps:
      - {from: caller, to: redis, text: "RPUSH queue"}
      - {from: caller, to: caller, text: "waits"}            # on its own line
      - {note: "text", over: [caller, redis], style: bad}    # a box across lifelines
      - {divider: "if the worker dies"}

Styles: plain, start, good, wait, bad, store. Text is `\n`-separated lines. The drawing is
440 units wide, so that at a phone's 358 px of content its 14-unit text is still 11 px; on
wider screens it is shown larger. Colours follow the reader's light or dark preference.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import yaml

HERE = Path(__file__).resolve().parent
WIDTH = 440
MARGIN = 10
FONT = 14
LINE = 18
CHAR = 0.56  # average glyph width, in em, of the sans-serif faces used (a safe estimate)
STYLES = ("plain", "start", "good", "wait", "bad", "store")

CSS = """
.t{font:14px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#1f2328}
.b{font-weight:600}
.h{font-size:16px;font-weight:700}
.m{fill:#57606a}
.halo{paint-order:stroke;stroke:#ffffff;stroke-width:5px;stroke-linejoin:round}
.e{stroke:#57606a;stroke-width:1.6;fill:none}
.d{stroke-dasharray:5 4}
.a{fill:#57606a}
.life{stroke:#8c959f;stroke-width:1.2;stroke-dasharray:4 4}
.plain{fill:#f6f8fa;stroke:#57606a}
.start{fill:#e7ecff;stroke:#4051b5}
.good{fill:#e6f4ea;stroke:#2e7d32}
.wait{fill:#fff4d6;stroke:#9a6700}
.bad{fill:#fde8e8;stroke:#c62828}
.store{fill:#eef6fb;stroke:#0b6e99}
@media (prefers-color-scheme:dark){
.t{fill:#e6edf3}.m{fill:#9da7b3}.halo{stroke:#1e2129}
.e{stroke:#9da7b3}.a{fill:#9da7b3}.life{stroke:#6e7681}
.plain{fill:#262c36;stroke:#9da7b3}.start{fill:#1f2a4d;stroke:#8c9eff}
.good{fill:#16301d;stroke:#6fcf7f}.wait{fill:#3a2d0c;stroke:#e3b341}
.bad{fill:#3d1717;stroke:#ff7b72}.store{fill:#0f2d3d;stroke:#58b4e0}
}
"""


class DiagramError(ValueError):
    """A source the drawing cannot honour (unknown node, text wider than its box)."""


def text_width(line: str, size: float = FONT) -> float:
    return len(line) * CHAR * size


def lines_of(text: Any) -> list[str]:
    return str(text).split("\n")


class Canvas:
    """SVG elements in drawing order, with the text helpers every kind uses."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, x: float, y: float, lines: list[str], *, anchor: str = "middle",
             cls: str = "t", halo: bool = False) -> None:
        classes = cls + (" halo" if halo else "")
        for i, line in enumerate(lines):
            self.parts.append(
                f'<text class="{classes}" x="{x:.1f}" y="{y + i * LINE:.1f}" '
                f'text-anchor="{anchor}">{escape(line)}</text>')

    def box(self, x: float, y: float, w: float, h: float, style: str) -> None:
        if style not in STYLES:
            raise DiagramError(f"style {style!r}: use one of {', '.join(STYLES)}")
        self.parts.append(f'<rect class="{style}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                          f'height="{h:.1f}" rx="7" stroke-width="1.5"/>')

    def line(self, points: list[tuple[float, float]], *, dashed: bool = False,
             arrow: bool = True) -> None:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
                        for i, (x, y) in enumerate(points))
        self.parts.append(f'<path class="e{" d" if dashed else ""}" d="{path}"/>')
        if arrow:
            self.arrowhead(points[-2], points[-1])

    def arrowhead(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        (x1, y1), (x2, y2) = start, end
        length = max(((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5, 1e-9)
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        back, half = 9.0, 4.5
        bx, by = x2 - ux * back, y2 - uy * back
        points = [(x2, y2), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)]
        self.parts.append('<path class="a" d="M' + " L".join(f"{x:.1f},{y:.1f}"
                                                            for x, y in points) + ' Z"/>')

    def render(self, height: float, title: str, description: str) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" '
            f'width="{WIDTH}" height="{height:.0f}" role="img" font-size="{FONT}">\n'
            f"<title>{escape(title)}</title>\n<desc>{escape(description)}</desc>\n"
            f"<style>{CSS}</style>\n" + "\n".join(self.parts) + "\n</svg>\n")


def header(canvas: Canvas, spec: dict[str, Any]) -> float:
    """The title (and subtitle) at the top; returns the y below them."""
    y = MARGIN + 16
    canvas.text(WIDTH / 2, y, [str(spec["title"])], cls="t h")
    y += 8
    if spec.get("subtitle"):
        subtitle = lines_of(spec["subtitle"])
        canvas.text(WIDTH / 2, y + LINE, subtitle, cls="t m")
        y += LINE * len(subtitle)
    return y + 16


# -- flow ---------------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    row: int
    col: int
    span: int
    lines: list[str]
    style: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


def flow(spec: dict[str, Any]) -> str:
    canvas = Canvas()
    top = header(canvas, spec)
    columns = int(spec.get("columns", 2))
    gap, row_gap = 16.0, float(spec.get("row_gap", 40))
    edges = spec.get("edges", [])
    lanes = {side: sum(1 for e in edges if e.get("route") == side) for side in ("left", "right")}
    left = MARGIN + 14 * lanes["left"]
    right = WIDTH - MARGIN - 14 * lanes["right"]
    column = (right - left - gap * (columns - 1)) / columns
    nodes: dict[str, Node] = {}
    for raw in spec["nodes"]:
        node = Node(str(raw["id"]), int(raw["row"]), int(raw.get("col", 0)),
                    int(raw.get("span", 1)), lines_of(raw["text"]), raw.get("style", "plain"))
        if node.id in nodes:
            raise DiagramError(f"node {node.id!r} is defined twice")
        if node.col + node.span > columns:
            raise DiagramError(f"node {node.id!r} does not fit in {columns} columns")
        node.x = left + node.col * (column + gap)
        node.w = node.span * column + (node.span - 1) * gap
        node.h = len(node.lines) * LINE + 14
        for line in node.lines:
            if text_width(line) > node.w - 12:
                raise DiagramError(f"node {node.id!r}: {line!r} is wider than its box")
        nodes[node.id] = node
    y = top
    for row in range(max(n.row for n in nodes.values()) + 1):
        members = [n for n in nodes.values() if n.row == row]
        height = max((n.h for n in members), default=0.0)
        for node in members:
            node.y = y + (height - node.h) / 2
        y += height + row_gap
    bottom = y - row_gap
    for node in nodes.values():
        canvas.box(node.x, node.y, node.w, node.h, node.style)
        canvas.text(node.cx, node.y + 7 + LINE - 5, node.lines)

    used = {"left": 0, "right": 0}
    for edge in edges:
        try:
            source, target = nodes[str(edge["from"])], nodes[str(edge["to"])]
        except KeyError as exc:
            raise DiagramError(f"edge {edge}: no node {exc}") from None
        dashed = bool(edge.get("dashed"))
        route = edge.get("route")
        if route in ("left", "right"):
            used[route] += 1
            if route == "right":
                lane = right + 14 * used[route] - 4
                sx, tx = source.x + source.w, target.x + target.w
            else:
                lane = left - 14 * used[route] + 4
                sx, tx = source.x, target.x
            sy = source.cy + float(edge.get("dy_from", 0))
            ty = target.cy + float(edge.get("dy_to", 0))
            canvas.line([(sx, sy), (lane, sy), (lane, ty), (tx, ty)], dashed=dashed)
            continue
        if source.row == target.row:
            forward = target.x > source.x
            start = (source.x + source.w if forward else source.x, source.cy)
            end = (target.x if forward else target.x + target.w, target.cy)
        else:
            down = target.row > source.row
            sx = float(edge.get("x_from", _shared_x(source, target)))
            tx = float(edge.get("x_to", sx if _inside(sx, target) else target.cx))
            start = (sx, source.y + source.h if down else source.y)
            end = (tx, target.y if down else target.y + target.h)
        canvas.line([start, end], dashed=dashed)
        if edge.get("label"):
            label = lines_of(edge["label"])
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            side = edge.get("label_side", "right")
            anchor = "start" if side == "right" else "end"
            offset = 7 if side == "right" else -7
            first = my - (len(label) - 1) * LINE / 2 + 5
            canvas.text(mx + offset, first, label, anchor=anchor, cls="t m", halo=True)
    return canvas.render(bottom + MARGIN, str(spec["title"]), str(spec.get("description", "")))


def _inside(x: float, node: Node) -> bool:
    return node.x + 10 <= x <= node.x + node.w - 10


def _shared_x(source: Node, target: Node) -> float:
    """Where a vertical edge leaves `source`: straight down into `target` when they overlap."""
    low, high = max(source.x, target.x) + 10, min(source.x + source.w, target.x + target.w) - 10
    if low <= high:
        return (low + high) / 2 if not (low <= source.cx <= high) else source.cx
    return source.cx


# -- sequence -----------------------------------------------------------------------------


def sequence(spec: dict[str, Any]) -> str:
    canvas = Canvas()
    top = header(canvas, spec)
    participants = spec["participants"]
    count = len(participants)
    edge = 58.0
    step = (WIDTH - 2 * edge) / max(count - 1, 1)
    xs = {str(p["id"]): edge + i * step for i, p in enumerate(participants)}
    head_h = 30.0
    for p in participants:
        x = xs[str(p["id"])]
        canvas.box(x - edge + 6, top, 2 * edge - 12, head_h, p.get("style", "start"))
        canvas.text(x, top + 20, [str(p["text"])], cls="t b")
    y = top + head_h + 14
    body: list[tuple[str, Any]] = []
    for raw in spec["steps"]:
        if "note" in raw:
            lines = lines_of(raw["note"])
            over = [xs[str(name)] for name in raw.get("over", list(xs))]
            x1, x2 = min(over) - edge + 8, max(over) + edge - 8
            for line in lines:
                if text_width(line) > x2 - x1 - 14:
                    raise DiagramError(f"note {line!r} is wider than its box")
            h = len(lines) * LINE + 12
            body.append(("note", (x1, y, x2 - x1, h, raw.get("style", "wait"), lines)))
            y += h + 12
        elif "divider" in raw:
            body.append(("divider", (y + 8, str(raw["divider"]))))
            y += 30
        else:
            source, target = xs[str(raw["from"])], xs[str(raw["to"])]
            lines = lines_of(raw["text"])
            text_h = len(lines) * LINE
            if source == target:  # an action on its own lifeline
                widest = max(text_width(line) for line in lines)
                anchor = "start" if source < WIDTH / 2 else "end"
                room = WIDTH - source - 14 if anchor == "start" else source - 14
                if widest > room:
                    raise DiagramError(f"{raw['text']!r} is too wide beside its lifeline")
                body.append(("self", (source, y, lines, anchor, raw.get("style"))))
                y += text_h + 10
                continue
            for line in lines:
                if text_width(line) > abs(target - source) + 2 * edge - 20:
                    raise DiagramError(f"message {line!r} is wider than the room for it")
            body.append(("message", (source, target, y, lines, bool(raw.get("dashed")))))
            y += text_h + 16
    bottom = y + 4
    for x in xs.values():
        canvas.parts.append(f'<line class="life" x1="{x:.1f}" y1="{top + head_h:.1f}" '
                            f'x2="{x:.1f}" y2="{bottom:.1f}"/>')
    for kind, data in body:
        if kind == "note":
            x, ny, w, h, style, lines = data
            canvas.box(x, ny, w, h, style)
            canvas.text(x + 8, ny + 19, lines, anchor="start")
        elif kind == "divider":
            dy, text = data
            canvas.parts.append(f'<line class="e d" x1="{MARGIN}" y1="{dy:.1f}" '
                                f'x2="{WIDTH - MARGIN}" y2="{dy:.1f}"/>')
            canvas.text(WIDTH / 2, dy + 5, [text], cls="t b", halo=True)
        elif kind == "self":
            x, sy, lines, anchor, style = data
            if style:
                width = max(text_width(line) for line in lines) + 14
                bx = x + 6 if anchor == "start" else x - 6 - width
                canvas.box(bx, sy - 4, width, len(lines) * LINE + 8, style)
            tx = x + 13 if anchor == "start" else x - 13
            canvas.parts.append(f'<circle class="a" cx="{x:.1f}" cy="{sy + 6:.1f}" r="3.5"/>')
            canvas.text(tx, sy + 11, lines, anchor=anchor)
        else:
            source, target, my, lines, dashed = data
            line_y = my + len(lines) * LINE + 2
            canvas.text((source + target) / 2, my + 12, lines, halo=True)
            canvas.line([(source, line_y), (target, line_y)], dashed=dashed)
    return canvas.render(bottom + MARGIN, str(spec["title"]), str(spec.get("description", "")))


KINDS = {"flow": flow, "sequence": sequence}


def draw(source: Path) -> str:
    spec = yaml.safe_load(source.read_text(encoding="utf-8"))
    kind = spec.get("kind")
    if kind not in KINDS:
        raise DiagramError(f"{source.name}: kind {kind!r}: use one of {', '.join(KINDS)}")
    try:
        return KINDS[kind](spec)
    except DiagramError as exc:
        raise DiagramError(f"{source.name}: {exc}") from None


def sources(folder: Path = HERE) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if an SVG differs from its source")
    args = parser.parse_args(argv)
    stale = []
    for source in sources():
        target = source.with_suffix(".svg")
        try:
            svg = draw(source)
        except DiagramError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != svg:
            stale.append(target.name)
            if not args.check:
                target.write_text(svg, encoding="utf-8")
    if args.check and stale:
        print("stale (run docs/diagrams/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("up to date: " if args.check or not stale else "wrote: ")
          + ", ".join(stale or [s.with_suffix(".svg").name for s in sources()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
