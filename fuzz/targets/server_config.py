"""server.yaml, read through the same path the services use (ServerConfig.load).

Contract: loading raises only ConfigError (one line naming the file and key), whatever the
bytes: bad YAML, deep nesting, aliases, wrong types.
"""

from __future__ import annotations

import yaml

from aura_common.config import ServerConfig
from aura_common.errors import ConfigError
from fuzz.scratch import ScratchFile

MAX_LEN = 4096
FILE = ScratchFile("fuzz-server-", ".yaml")


def test_one_input(data: bytes) -> None:
    try:
        config = ServerConfig.load(FILE.holding(data))
    except ConfigError:
        return
    assert ServerConfig.from_mapping(yaml.safe_load(config.dump())) == config
