"""The README's Performance tables come from the benches, never by hand.

Each bench that has a table in README.md owns the text between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` (NAME is the bench module, e.g. `transports`), and replaces it when run
with `--write-readme`.
"""

from __future__ import annotations

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
