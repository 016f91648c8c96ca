"""python3 -m fuzz TARGET [--runs N | --seconds S] [--merge DIR...] [--reproduce FILE...]."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from fuzz import TARGETS

CORPORA = Path(__file__).resolve().parent / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m fuzz", description=__doc__)
    parser.add_argument("target", nargs="?", choices=TARGETS)
    parser.add_argument("--list", action="store_true", help="print the targets and exit")
    parser.add_argument("--runs", type=int, default=-1, help="inputs to run (-1: no limit)")
    parser.add_argument("--seconds", type=int, default=0, help="stop after this long (0: never)")
    parser.add_argument("--max-len", type=int, default=0,
                        help="longest input (default: the target's MAX_LEN)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024,
                        help="a process above this much memory is a crash (libFuzzer)")
    parser.add_argument("--timeout", type=int, default=10,
                        help="one input running longer than this many seconds is a hang")
    parser.add_argument("--artifacts", default=".", help="where crashing inputs are written")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="add to the seed corpus only those inputs of DIRs that add coverage")
    parser.add_argument("--reproduce", nargs="+", metavar="FILE",
                        help="run these inputs once each (a crash shows its traceback)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.target is None:
        parser.error("name a target (--list shows them)")

    import atheris

    with atheris.instrument_imports(include=["aura_common", "services", "fuzz.targets"]):
        target = importlib.import_module(f"fuzz.targets.{args.target}")
    seeds = CORPORA / args.target
    artifacts = os.path.join(os.path.abspath(args.artifacts), "")
    options = [
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-timeout={args.timeout}",
        f"-max_len={args.max_len or target.MAX_LEN}",
        f"-artifact_prefix={artifacts}{args.target}-",
        "-print_final_stats=1",
    ]
    if args.reproduce:
        atheris.Setup([sys.argv[0], *options, *args.reproduce], target.test_one_input)
    elif args.merge:
        seeds.mkdir(parents=True, exist_ok=True)
        atheris.Setup([sys.argv[0], *options, "-merge=1", str(seeds), *args.merge],
                      target.test_one_input)
    else:
        # libFuzzer writes new inputs into the first corpus directory: keep them out of the
        # repository's seeds.
        found = tempfile.mkdtemp(prefix=f"fuzz-{args.target}-")
        options += [f"-runs={args.runs}", f"-max_total_time={args.seconds}"]
        atheris.Setup([sys.argv[0], *options, found, str(seeds)], target.test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
