"""The documentation site: `mkdocs build --strict` passes, and no page is left out of the nav."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _nav_pages(nav: Any) -> set[str]:
    """Every page path named anywhere in a mkdocs `nav:` tree."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_nav_pages(item) for item in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(value) for value in nav.values())) if nav else set()
    return set()


def _load_mkdocs_yml() -> dict[str, Any]:
    # mkdocs.yml may carry `!!python/name:` tags; a loader that ignores unknown tags is enough
    # to read the nav.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    with open(ROOT / "mkdocs.yml", encoding="utf-8") as handle:
        return yaml.load(handle, Loader=Loader)


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )
    assert (tmp_path / "site" / "index.html").exists()


def test_every_page_is_in_the_nav() -> None:
    config = _load_mkdocs_yml()
    assert config.get("docs_dir", "docs") == "docs"
    in_nav = _nav_pages(config["nav"])
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), f"pages missing from mkdocs.yml nav: {sorted(pages - in_nav)}"
    assert in_nav - pages == set(), f"nav entries with no page: {sorted(in_nav - pages)}"


def _search_separator() -> str:
    config = _load_mkdocs_yml()
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "search" in plugin:
            return str(plugin["search"]["separator"])
    raise AssertionError("mkdocs.yml has no search plugin with a separator")


def test_search_splits_dotted_and_underscored_names() -> None:
    separator = re.compile(_search_separator())
    words = [w for w in separator.split("bus.drain_timeout apis.<api>.rpc_timeout 3.14") if w]
    assert words == ["bus", "drain", "timeout", "apis", "<api>", "rpc", "timeout", "3.14"]


def test_the_landing_page_links_the_newcomer_pages() -> None:
    landing = (DOCS / "index.md").read_text(encoding="utf-8")
    for target in ("tutorial.md", "install.md", "howto/write-a-transport.md",
                   "reference/transports.md", "changelog.md"):
        assert f"({target})" in landing, f"the landing page does not link {target}"


@pytest.mark.slow
def test_the_repository_link_comes_from_the_environment(tmp_path: Path) -> None:
    """mkdocs.yml takes the repository's URL from BUS_DOCS_REPO_URL (where the site is
    published from); the header then links it."""
    url = "https://git.example.org/team/bus"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "BUS_DOCS_REPO_URL": url}
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    landing = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert f'href="{url}"' in landing and "md-source" in landing
