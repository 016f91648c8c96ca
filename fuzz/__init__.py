"""Coverage-guided fuzzing (atheris/libFuzzer) of every parser that untrusted bytes reach.

One module per parser in `fuzz/targets/`, each with `test_one_input(data)` asserting the
parser's contract: it raises only its documented exception types and its output stays
bounded. Seed corpora live in `fuzz/corpus/<target>/` (small, minimised). Run one target:

    python3 -m fuzz TARGET --runs 1000000       # the long run, see docs/fuzzing.md
    python3 -m fuzz --list

This module imports nothing from Aura: the target's imports must happen under atheris's
instrumentation for coverage to be recorded.
"""

from __future__ import annotations

TARGETS = (
    "wireguard_messages",
    "wireguard_cookie_reply",
    "clienthello",
    "framing",
    "ipc_frames",
    "control",
    "manifest",
    "server_config",
    "client_config",
    "registry",
    "leases",
    "runtime",
    "handshake_timestamps",
    "quic_admission",
)
