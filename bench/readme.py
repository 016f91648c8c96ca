"""The README's Performance tables come from the benches, never by hand.

Each bench that has a table in README.md owns the text between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` (NAME is the bench module, e.g. `transports`), and replaces it when run
with `--write-readme`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(document: str, name: str, text: str) -> str:
    """`document` with the block of bench `name` replaced by `text` (markers kept)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(document)) != 1:
        raise ValueError(f"README.md needs exactly one {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", document)


def write(name: str, text: str, readme: Path = README) -> None:
    readme.write_text(replace_block(readme.read_text(), name, text))
    print(f"wrote the {name} table into {readme}")


def arguments(doc: str, name: str, *, seconds: int | None = None, repeat: bool = False
              ) -> argparse.ArgumentParser:
    """The parser of bench `name` (described by the first line of `doc`): `--write-readme`,
    and `--seconds` per iperf3 run (default `seconds`) and `--repeat` where asked for."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    if seconds is not None:
        parser.add_argument("--seconds", type=int, default=seconds,
                            help=f"per iperf3 run (default {seconds})")
    if repeat:
        parser.add_argument("--repeat", type=int, default=1, help="runs (default 1)")
    parser.add_argument("--write-readme", action="store_true",
                        help=f"replace the table between the bench:{name} markers")
    return parser


def publish(name: str, table: str, write_readme: bool) -> None:
    """Print bench `name`'s table and, with `--write-readme`, put it into README.md."""
    print(table)
    if write_readme:
        write(name, table)


def medians_note(runs: int) -> list[str]:
    """The lines that end a table whose ratios are the medians of `runs` runs (none for one)."""
    return ["", f"Ratios are medians of {runs} runs; figures are the last run's."] if runs > 1 \
        else []
