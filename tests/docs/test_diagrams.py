"""The docs' diagrams: the committed SVGs are what docs/diagrams/build.py draws from their
text sources, each is legible (viewBox 440 wide, no text under 14 units), follows dark
mode, and is shown on some page as a link to itself (a click opens it full size)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIAGRAMS = ROOT / "docs" / "diagrams"
SVG = "{http://www.w3.org/2000/svg}"


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("diagrams_build", DIAGRAMS / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = build_module()
SOURCES = build.sources()


def test_there_are_the_four_pictures_of_issue_17() -> None:
    assert {s.stem for s in SOURCES} >= {"event-lifecycle", "consumer-groups", "rpc-sequence",
                                         "plugin-enablement"}


def test_the_committed_svgs_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(DIAGRAMS / "build.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_an_edited_source_makes_its_svg_stale(source: Path, tmp_path: Path) -> None:
    edited = tmp_path / source.name
    text = source.read_text(encoding="utf-8")
    edited.write_text(re.sub(r"^title: .*$", "title: Another title", text, flags=re.M),
                      encoding="utf-8")
    assert build.draw(edited) != source.with_suffix(".svg").read_text(encoding="utf-8")


def test_text_too_wide_for_its_box_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: flow\ntitle: t\nnodes:\n  - {id: a, row: 0, text: '" + "x" * 80
                   + "'}\n", encoding="utf-8")
    with pytest.raises(build.DiagramError, match="bad.yaml: node 'a'.*wider than its box"):
        build.draw(bad)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_each_svg_is_legible_and_dark_mode_aware(source: Path) -> None:
    svg = source.with_suffix(".svg")
    root = ET.parse(svg).getroot()
    assert root.get("viewBox", "").split()[2] == "440"
    assert root.find(f"{SVG}title") is not None and root.find(f"{SVG}desc") is not None
    style = root.find(f"{SVG}style")
    assert style is not None and "prefers-color-scheme:dark" in (style.text or "")
    sizes = [int(size) for size in re.findall(r"font(?:-size)?:(\d+)px", style.text or "")]
    assert sizes and min(sizes) >= 14
    assert all("font-size" not in (text.get("style") or "") for text in root.iter(f"{SVG}text"))
    assert len(list(root.iter(f"{SVG}text"))) > 3, "a diagram without text"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_each_svg_is_shown_as_a_link_to_itself(source: Path) -> None:
    name = re.escape(source.with_suffix(".svg").name)
    linked = re.compile(rf"\[!\[[^\]]+\]\(((?:\.\./)*diagrams/{name})\)\]\(\1\)")
    pages = [p for p in (ROOT / "docs").rglob("*.md") if linked.search(p.read_text("utf-8"))]
    assert pages, f"no page shows {source.stem}.svg as [![alt](x.svg)](x.svg)"
