"""Where a client keeps the newest bridge manifest it has accepted.

The stored serial is the floor for every later manifest: one with a lower serial is refused
(rollback), so a replayed old manifest cannot send the client back to abandoned ports. A
manifest naming another server's WireGuard key is refused too: one CA may sign for several
servers, and their ports are no use with this server's key.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os

from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.errors import AuraError
from aura_common.pki.manifest import Manifest, ManifestError, SignedManifest, verify
from aura_common.state.atomic import locked, write_atomic

log = logging.getLogger(__name__)


class ManifestStore:
    def __init__(
        self,
        path: str | os.PathLike[str],
        ca_public_key: ed25519.Ed25519PublicKey | bytes,
        server_public_key: bytes,
    ) -> None:
        self.path = os.fspath(path)
        if isinstance(ca_public_key, bytes):
            ca_public_key = ed25519.Ed25519PublicKey.from_public_bytes(ca_public_key)
        self.ca_public_key = ca_public_key
        self.server_public_key = server_public_key

    def stored(self) -> tuple[SignedManifest, Manifest] | None:
        """The stored manifest, signature checked but not its expiry; None if there is none.

        A damaged or foreign file is reported and treated as absent.
        """
        try:
            # In a folder the config's owner may own: no link, no FIFO, nothing huge.
            signed = SignedManifest.load(self.path)
            if signed is None:
                return None
            manifest = verify(signed, self.ca_public_key, now=None)
        except ManifestError as error:
            log.warning("ignoring stored manifest %s: %s", self.path, error.detail)
            return None
        except AuraError as error:
            log.warning("ignoring stored manifest: %s", error)
            return None
        return signed, manifest

    @property
    def serial(self) -> int:
        """The serial of the stored manifest, 0 if none."""
        current = self.stored()
        return 0 if current is None else current[1].serial

    def accept(
        self, signed: SignedManifest, *, now: datetime.datetime | None = None
    ) -> Manifest:
        """Verify `signed` and store it if newer; raise ManifestError (logged) if refused.

        A manifest that verifies but cannot be stored (its folder read-only or full) is
        still returned, so it applies until the client stops; the failure is logged as one
        error naming the file.
        """
        now = now or datetime.datetime.now(datetime.UTC)
        floor = self.serial
        try:
            manifest = verify(signed, self.ca_public_key, now=now, min_serial=floor)
            if manifest.server_public_key != self.server_public_key:
                raise ManifestError(
                    "another_server",
                    f"it is for the server with key {_b64(manifest.server_public_key)}; "
                    f"this client's server has key {_b64(self.server_public_key)}",
                )
        except ManifestError as error:
            log.warning("refused bridge manifest: %s", error.detail)
            raise
        if manifest.serial > floor:
            self._store(signed, manifest.serial)
        return manifest

    def _store(self, signed: SignedManifest, serial: int) -> None:
        try:
            with locked(self.path):
                if serial > self.serial:  # not overtaken since it was verified
                    write_atomic(self.path, signed.to_json().encode(), 0o600)
                    log.info("accepted bridge manifest serial %d", serial)
        except (OSError, AuraError) as error:
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            log.error("%s: cannot store bridge manifest serial %d (%s); it applies until the "
                      "client stops", self.path, serial, why)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()
