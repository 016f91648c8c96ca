"""The transport order the client follows, and the bridge manifests that change it.

At start the order comes from the newest of the manifest embedded in the config and the one
stored from the server; later a newer manifest pushed through the tunnel replaces it (new ports,
a transport dropped) and wakes the path loop so it probes for a better transport at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aura_common.config import ClientConfig
from aura_common.errors import ConfigError
from aura_common.pki.manifest import Manifest, ManifestError, SignedManifest, parse_body
from services.client.manifest_store import ManifestStore
from services.client.schedule import Schedule, Target, targets

log = logging.getLogger("aura-client")


class TransportOrder:
    """`available`: the transports this client has a carrier for. `changed` is set whenever a
    manifest replaced the order."""

    def __init__(self, config: ClientConfig, available: Sequence[str]) -> None:
        self.config = config
        self.available = list(available)
        self.store = ManifestStore(config.manifest_state_file, config.server.ca_public_key,
                                   config.server.public_key)
        self.manifest_serial = 0
        self.schedule = Schedule(self._targets(self._initial_manifest()))
        self.changed = asyncio.Event()

    def _initial_manifest(self) -> Manifest | None:
        """The newest of the manifest in the config and the one stored from the server."""
        embedded = self.config.manifest
        if embedded is not None:
            try:
                signed = SignedManifest.from_mapping(embedded)
                if parse_body(signed.body).serial > self.store.serial:
                    self.store.accept(signed)
            except ManifestError as error:
                log.warning("ignoring the manifest in %s: %s", self.config.path, error.detail)
        stored = self.store.stored()
        if stored is None:
            return None
        self.manifest_serial = stored[1].serial
        return stored[1]

    def _targets(self, manifest: Manifest | None) -> list[Target]:
        order = targets(self.config, manifest, self.available)
        if not order:
            raise ConfigError(
                self.config.path, "transports.order",
                f"at least one transport this client has ({', '.join(self.available)})",
                list(self.config.transports.order),
            )
        return order

    def accept_manifest(self, signed: SignedManifest, now: float) -> None:
        try:
            manifest = self.store.accept(signed)  # logs refusals and acceptances
        except ManifestError:
            return
        if manifest.serial > self.manifest_serial:
            self.manifest_serial = manifest.serial
            self.schedule.replace_order(self._targets(manifest), now)
            self.changed.set()
            log.info("transport order from manifest serial %d: %s", manifest.serial,
                     ", ".join(str(t) for t in self.schedule.order))
