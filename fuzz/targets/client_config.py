"""A client's config file (ClientConfig.load), the file `aura client up` is handed.

Contract: loading raises only ConfigError, whatever the bytes.
"""

from __future__ import annotations

from aura_common.config import ClientConfig
from aura_common.errors import ConfigError
from fuzz.scratch import ScratchFile

MAX_LEN = 8192
FILE = ScratchFile("fuzz-client-", ".yaml")


def test_one_input(data: bytes) -> None:
    try:
        ClientConfig.load(FILE.holding(data))
    except ConfigError:
        return
