"""The router's saved handshake timestamps (services/router/replay.py).

Contract: `parse` raises only ConfigError; what it accepts is 32-byte keys to 12-byte
timestamps, and saving it reads back the same.
"""

from __future__ import annotations

import os
import tempfile

from aura_common.errors import ConfigError
from services.router import replay

MAX_LEN = 8192
FOLDER = tempfile.mkdtemp(prefix="aura-fuzz-")
PATH = os.path.join(FOLDER, "handshake-timestamps.json")


def test_one_input(data: bytes) -> None:
    try:
        timestamps = replay.parse(data, "handshake-timestamps.json")
    except ConfigError:
        return
    assert all(len(k) == 32 and len(v) == 12 for k, v in timestamps.items())
    replay.save(PATH, timestamps, timestamps)
    assert replay.load(PATH) == timestamps
