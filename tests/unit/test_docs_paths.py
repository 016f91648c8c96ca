"""Every file, folder and module the docs name exists: a move that forgets a doc fails here."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
TOP = "aura_common|services|aura_lab|bench|tests|units|packaging|fuzz"
# `services/tcp/clienthello.py`, `aura_common/ipc/`, `aura_common/wire/framing.FrameDecoder`
PATH = re.compile(rf"`((?:{TOP})/[\w./-]*)`")
# `aura_common.service.metrics`, `aura_common.state.registry.open_store`
DOTTED = re.compile(r"`((?:aura_common|services)(?:\.\w+)+)`")


def named(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return sorted({(doc.name, name) for doc in DOCS for name in pattern.findall(doc.read_text())})


def path_exists(name: str) -> bool:
    if (ROOT / name).exists():
        return True
    module, _, attribute = name.rpartition(".")  # a module's attribute: framing.FrameDecoder
    return bool(attribute.isidentifier() and (ROOT / f"{module}.py").is_file())


@pytest.mark.parametrize(("doc", "name"), named(PATH))
def test_named_path_exists(doc: str, name: str) -> None:
    if any(part.isupper() for part in name.split("/")):  # a placeholder: fuzz/corpus/TARGET/
        return
    assert path_exists(name), f"{doc} names {name}, which is not in the tree"


@pytest.mark.parametrize(("doc", "name"), named(DOTTED))
def test_named_module_exists(doc: str, name: str) -> None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            assert hasattr(found, attribute), f"{doc} names {name}: no {attribute}"
            found = getattr(found, attribute)
        return
    raise AssertionError(f"{doc} names {name}, which is no module")
