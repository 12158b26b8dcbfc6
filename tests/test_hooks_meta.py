"""Every hook spec is typed and documented in docs/reference/hooks.md (that the kernel really
calls each one, with its arguments, is tests/test_hooks_called.py)."""

from __future__ import annotations

import inspect
import re

import pytest

from bus_core import hookspecs
from tests.conftest import ROOT

SPECS = sorted(
    name for name, value in vars(hookspecs).items()
    if name.startswith("bus_") and inspect.isfunction(value)
)


def test_there_are_hooks():
    assert len(SPECS) >= 18


@pytest.mark.parametrize("name", SPECS)
def test_hook_spec_is_typed_and_has_a_docstring(name: str):
    spec = getattr(hookspecs, name)
    signature = inspect.signature(spec)
    assert all(p.annotation is not p.empty for p in signature.parameters.values()), name
    assert signature.return_annotation is not signature.empty, name
    doc = inspect.getdoc(spec) or ""
    assert ":return:" in doc, f"{name} docstring does not say what it returns"
    for param in signature.parameters:
        assert f":param {param}:" in doc, f"{name} docstring does not describe {param}"


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_documented_in_the_reference(name: str):
    text = (ROOT / "docs" / "reference" / "hooks.md").read_text()
    assert re.search(rf"^### `?{name}`?\s*$", text, re.MULTILINE), (
        f"docs/reference/hooks.md has no '### {name}' section")
