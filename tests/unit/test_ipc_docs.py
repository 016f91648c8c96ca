"""docs/architecture.md's IPC tables and aura_common/ipc/frames.py say the same: every frame and
record the docs list exists with exactly the listed fields, and every one the code defines is
listed, in the direction the code accepts it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aura_common.ipc import frames
from aura_common.ipc.frames import Protocol

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
# Each socket's section, the side that serves it, and what each side accepts.
SOCKETS = {
    "## IPC: router socket": ("router", frames.TO_ROUTER, frames.FROM_ROUTER),
    "## IPC: signer socket": ("signer", frames.TO_SIGNER, frames.FROM_SIGNER),
    "## IPC: client control socket": ("client", frames.TO_CLIENT, frames.FROM_CLIENT),
}
Table = dict[str, tuple[str, list[str]]]  # first column -> (second column, field names)


def names(cell: str) -> list[str]:
    """The backquoted names of a fields cell, leaving out what parentheses say about them."""
    depth, kept = 0, []
    for char in cell:
        depth += char == "("
        if depth == 0:
            kept.append(char)
        depth -= char == ")"
    return re.findall(r"`(\w+)`", "".join(kept))


def tables(section: str) -> dict[str, list[list[str]]]:
    """Rows of the tables in `section`, by the heading of their first column."""
    text = DOCS.read_text()
    body = text[text.index(section) + len(section):]
    body = body[:body.find("\n## ")] if "\n## " in body else body
    found: dict[str, list[list[str]]] = {}
    head = None
    for line in body.splitlines():
        if not line.startswith("|"):
            head = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if head is None:
            head = cells[0]
            found[head] = []
        elif not set(cells[0]) <= {"-"}:
            found[head].append(cells)
    return found


def frames_in_docs(section: str) -> Table:
    table: Table = {}
    for tag, direction, fields, *_ in tables(section)["frame"]:
        table[tag.strip("`")] = (direction, names(fields))
    return table


def frames_in_code(server: str, to_server: Protocol, from_server: Protocol) -> Table:
    table: Table = {}
    for tag in sorted({*to_server.frames, *from_server.frames}):
        inbound, outbound = to_server.frames.get(tag), from_server.frames.get(tag)
        if inbound is not None and outbound is not None:
            assert inbound is outbound, f"{tag}: two frames under one tag on one socket"
            direction = "both"
        elif inbound is not None:
            direction = f"→ {server}"
        else:
            direction = f"{server} →"
        table[tag] = (direction, frames.fields_of(inbound or outbound))  # type: ignore[arg-type]
    return table


@pytest.mark.parametrize("section", SOCKETS)
def test_each_sockets_frame_table_matches_the_code(section: str) -> None:
    server, to_server, from_server = SOCKETS[section]
    documented = frames_in_docs(section)
    code = frames_in_code(server, to_server, from_server)
    assert sorted(documented) == sorted(code), "frames in the docs vs in the code"
    for tag, (direction, fields) in code.items():
        doc_direction, doc_fields = documented[tag]
        assert doc_fields == fields, f"{tag}: fields in the docs vs in the code"
        if direction == "both":
            assert doc_direction == "both", tag
        elif direction.startswith("→"):
            assert doc_direction.endswith(direction), f"{tag} goes to the {server}"
        else:
            assert doc_direction.startswith(direction), f"{tag} comes from the {server}"


def test_record_table_matches_the_code() -> None:
    used = {record for protocol in (frames.TO_ROUTER, frames.FROM_ROUTER, frames.TO_SIGNER,
                                    frames.FROM_SIGNER, frames.TO_CLIENT, frames.FROM_CLIENT)
            for cls in protocol.frames.values() for record in frames.records_in(cls)}
    code = {record.__name__: (frames.wire_form(record), frames.fields_of(record))
            for record in used}
    documented = {name.strip("`"): (form, names(fields)) for section in SOCKETS
                  for name, form, fields in tables(section).get("record", [])}
    assert documented == code


def test_the_check_catches_a_difference() -> None:
    assert names("`a` (list of `B`), `c` (`d`, `e`)") == ["a", "c"]
    server, to_server, from_server = SOCKETS["## IPC: router socket"]
    code = frames_in_code(server, to_server, from_server)
    assert code["hs"] == ("→ router", ["items"])
    assert code["pkts"] == ("both", ["at", "batches"])
    assert code["peers"] == ("router →", ["peers"])
