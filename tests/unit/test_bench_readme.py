"""The README's bench tables are replaced between their markers, and only there."""

from __future__ import annotations

import pytest

from bench.readme import replace_block

DOCUMENT = """# Title
before
<!-- bench:transports -->
| old | table |
<!-- /bench:transports -->
between
<!-- bench:latency -->
old latency
<!-- /bench:latency -->
after
"""


def test_only_the_named_block_changes() -> None:
    updated = replace_block(DOCUMENT, "transports", "| new | table |\n")
    assert "| new | table |" in updated and "| old | table |" not in updated
    assert "old latency" in updated
    assert updated.replace("| new | table |", "| old | table |") == DOCUMENT


def test_replacing_twice_is_stable() -> None:
    once = replace_block(DOCUMENT, "latency", "fresh")
    assert replace_block(once, "latency", "fresh") == once


@pytest.mark.parametrize("document", ["no markers", DOCUMENT + DOCUMENT])
def test_a_missing_or_doubled_block_is_refused(document: str) -> None:
    with pytest.raises(ValueError, match="bench:transports"):
        replace_block(document, "transports", "x")
