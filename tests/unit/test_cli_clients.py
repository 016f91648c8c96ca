"""Client provisioning and status helpers."""

from __future__ import annotations

import pytest

from aura_common.errors import AuraError
from services.cli.clients import parse_networks
from services.cli.status import human_bytes, human_duration


def test_bad_cidr_names_the_option() -> None:
    with pytest.raises(AuraError, match=r"--vpn-cidrs 10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/33"], "--vpn-cidrs")


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert human_duration(59) == "59s"
    assert human_duration(3600 + 120) == "1h 2m"
    assert human_duration(2 * 86400 + 3600) == "2d 1h"
