"""A client's config file (ClientConfig.load), the file `aura client up` is handed.

Contract: loading raises only ConfigError, whatever the bytes.
"""

from __future__ import annotations

import atexit
import os
import tempfile

from aura_common.config import ClientConfig
from aura_common.errors import ConfigError

MAX_LEN = 8192
_FD, PATH = tempfile.mkstemp(prefix="fuzz-client-", suffix=".yaml")
atexit.register(os.unlink, PATH)


def test_one_input(data: bytes) -> None:
    os.ftruncate(_FD, 0)
    os.pwrite(_FD, data, 0)
    try:
        ClientConfig.load(PATH)
    except ConfigError:
        return
