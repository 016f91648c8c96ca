"""Signed bridge manifests: a client config, the control channel and the state file carry them.

Contract: `SignedManifest.from_json` and `parse_body` raise only ManifestError; `verify`
raises only ManifestError (a random signature never verifies, so the body parser is also
fed directly).
"""

from __future__ import annotations

import contextlib
import datetime

from aura_common.pki import manifest
from aura_common.pki.manifest import ManifestError, SignedManifest

MAX_LEN = 4 * manifest.MAX_BODY_BYTES + 64
CA_PUBLIC = bytes(range(32, 64))
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_one_input(data: bytes) -> None:
    try:
        signed = SignedManifest.from_json(data)
    except ManifestError:
        pass
    else:
        assert len(signed.body) <= manifest.MAX_BODY_BYTES
        with contextlib.suppress(ManifestError):
            manifest.verify(signed, CA_PUBLIC, now=NOW)
    try:
        parsed = manifest.parse_body(data)
    except ManifestError:
        return
    assert parsed.serial >= 1
    assert parsed.expires > parsed.issued
