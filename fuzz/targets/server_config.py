"""server.yaml, read through the same path the services use (ServerConfig.load).

Contract: loading raises only ConfigError (one line naming the file and key), whatever the
bytes: bad YAML, deep nesting, aliases, wrong types.
"""

from __future__ import annotations

import atexit
import os
import tempfile

import yaml

from aura_common.config import ServerConfig
from aura_common.errors import ConfigError

MAX_LEN = 4096
_FD, PATH = tempfile.mkstemp(prefix="fuzz-server-", suffix=".yaml")
atexit.register(os.unlink, PATH)


def test_one_input(data: bytes) -> None:
    os.ftruncate(_FD, 0)
    os.pwrite(_FD, data, 0)
    try:
        config = ServerConfig.load(PATH)
    except ConfigError:
        return
    assert ServerConfig.from_mapping(yaml.safe_load(config.dump())) == config
