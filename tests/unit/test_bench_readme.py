"""The README's bench tables are replaced between their markers, and only there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import compare, latency, readme, scale, transports
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


# -- the README itself: every table is the output of the bench that names it ---------------
BENCH = Path(__file__).resolve().parents[2] / "bench"
BLOCK = re.compile(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", re.DOTALL)


def readme_blocks() -> dict[str, tuple[str, str]]:
    """Each bench block of README.md: name -> (the text since the previous block, table)."""
    text = readme.README.read_text()
    blocks, since = {}, text.index("## Performance")
    for match in BLOCK.finditer(text):
        blocks[match.group(1)] = (" ".join(text[since:match.start()].split()), match.group(2))
        since = match.end()
    return blocks


def rows(table: str) -> list[str]:
    """The header and the first cell of every row of a markdown table: its layout."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    return [lines[0]] + [line.split("|")[1].strip() for line in lines[2:]]


def test_every_readme_table_is_written_by_the_bench_named_before_it() -> None:
    writers = {match.group(1): path.stem for path in BENCH.glob("*.py")
               for match in re.finditer(r'readme\.(?:write|publish)\("(\w+)"',
                                           path.read_text())}
    blocks = readme_blocks()
    assert set(blocks) == set(writers)
    for name, (before, _) in blocks.items():
        assert writers[name] == name
        assert "--write-readme" in (BENCH / f"{name}.py").read_text()
        assert f"python3 -m bench.{name}" in before and "--write-readme" in before, name


def test_each_readme_table_has_the_layout_its_bench_writes() -> None:
    """A table edited by hand, or left from an older bench, has other rows than the bench
    writes now: run the bench with --write-readme again."""
    blocks = {name: table for name, (_, table) in readme_blocks().items()}
    compared = [compare.Result(path, 1e9, 1e9, 1.0) for path in
                ("bare veth", "wireguard-go pair", "wireguard-go -> aura")]
    assert rows(blocks["compare"])[0] == rows(compare.markdown(compared))[0]
    aura = [compare.Result(f"aura {t}", 1e9, 1e9, 1.0) for t in transports.TRANSPORTS]
    runs = [[*aura, compare.Result("openvpn tcp", 1e9, 1e9, 1.0)]]
    assert rows(blocks["transports"]) == rows(transports.markdown(runs))
    paths = ["bare veth", latency.REFERENCE, *(f"aura {t}" for t in latency.TRANSPORTS)]
    measured = [latency.Latency(path, 1.0, 2.0, 2.0, 1e9, 1e9) for path in paths]
    assert rows(blocks["latency"]) == rows(
        latency.table(measured, latency.ratios(measured), 1))
    ramp = [{"offered_per_s": 100.0, "completed": 100, "completed_per_s": 100.0,
             "initiations": 100, "cookie_replies": 0}]
    cores = scale.Cores(0.5, 0.5)
    share = scale.CpuShare(cores, cores, cores, cores, cores, 2.0, 2)
    run = scale.Scale(1000, 1000, 5.0, 1000, 1000, 100.0, 1.0, 1e9, 1e9, scale.Rss(512, 512),
                      scale.Rss(1024, 1024), 0.01, 0.01,
                      1, 1000, ramp, 1000, 1000, scale.KernelDrops(0, 0, 0), share, share,
                      1.0)
    assert rows(blocks["scale"]) == rows(scale.table(run))
