"""aura-signer: the only process that reads the CA private key. It signs bridge manifests on
request and does nothing else.

Protocol on `signer.sock` (aura_common.ipc.frames, `TO_SIGNER` and `FROM_SIGNER`): a `Sign`
request is answered by `Signed`; anything else, or a request the signer refuses, by an `Error`
frame, after which the signer closes the channel.

Every signing takes the next serial, persisted in `manifest.serial` before the signature is
made, so a serial is never used twice and never goes down, even across crashes. A cluster
member asks for a serial above the newest any member published (`serial_above`), as its own
count does not know the others'. The newest
manifest is also written to `manifest.json`, where the router picks it up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
from collections.abc import Sequence

from aura_common import ipc
from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_common.ipc.accounts import ADMIN, Accounts
from aura_common.ipc.frames import TO_SIGNER, Error, ManifestText, Sign, Signed
from aura_common.pki import ca
from aura_common.pki.manifest import (
    HostPorts,
    Manifest,
    SignedManifest,
    sign,
    verify,
)
from aura_common.service import systemd
from aura_common.service.log import fields
from aura_common.service.shell import run_service
from aura_common.state.atomic import LockBusy, locked, write_atomic

log = logging.getLogger("aura-signer")



class RequestError(ValueError):
    """A request the signer refuses; the message goes back to the caller."""


class Signer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.ca_key = ca.load_ca_private_key_file(config.ca_key_file)

    async def on_channel(self, channel: ipc.Channel) -> None:
        caller = channel.peer_credentials
        while True:
            frame = await channel.recv()
            try:
                if not isinstance(frame, Sign):
                    raise RequestError(f"unknown request {frame.TAG!r}; the signer only signs")
                reply = self.handle(frame, caller)
            except RequestError as error:
                log.warning(
                    "refused a request from uid %d: %s", caller.uid, error,
                    extra=fields(uid=caller.uid, pid=caller.pid),
                )  # fmt: skip
                await channel.send_reliable(Error(str(error)))
                return
            await channel.send_reliable(reply)

    def handle(self, frame: Sign, caller: ipc.Credentials) -> Signed:
        signed, manifest = self.sign(frame.endpoints, frame.expires_days,
                                     frame.server_public_key, frame.serial_above)
        log.info(
            "signed bridge manifest serial %d for uid %d: %s",
            manifest.serial, caller.uid, ", ".join(manifest.bridges),
            extra=fields(serial=manifest.serial, uid=caller.uid),
        )  # fmt: skip
        return Signed(ManifestText(**signed.to_mapping()))

    def sign(
        self, endpoints: list[HostPorts], expires_days: int, server_public_key: bytes,
        serial_above: int = 0,
    ) -> tuple[SignedManifest, Manifest]:
        try:
            with locked(self.config.manifest_serial_file, wait=False):
                return self._sign_locked(endpoints, expires_days, server_public_key,
                                         serial_above)
        except LockBusy:
            # Never wait on the event loop for a lock another account could hold.
            raise RequestError("the manifest serial is locked by another process; "
                               "try again") from None

    def _sign_locked(
        self, endpoints: list[HostPorts], expires_days: int, server_public_key: bytes,
        serial_above: int,
    ) -> tuple[SignedManifest, Manifest]:
        serial = max(self.last_serial(), serial_above) + 1
        try:
            manifest = Manifest.create(
                serial=serial,
                issued=datetime.datetime.now(datetime.UTC),
                expires_days=expires_days,
                server_public_key=server_public_key,
                endpoints=endpoints,
            )
            signed = sign(manifest, self.ca_key)
        except ValueError as error:
            raise RequestError(f"sign: {error}") from None
        # The serial is on disk before the manifest leaves this process, so no crash can
        # make it be used twice.
        write_atomic(self.config.manifest_serial_file, f"{serial}\n".encode(), 0o644)
        write_atomic(self.config.manifest_file, signed.to_json().encode(), 0o644)
        return signed, manifest

    def last_serial(self) -> int:
        """The highest serial used so far: from `manifest.serial`, or the stored manifest if
        that is higher (the serial file was lost), so serials never go down."""
        path = self.config.manifest_serial_file
        try:
            with open(path, encoding="ascii") as file:
                text = file.read().strip()
        except FileNotFoundError:
            text = "0"
        except (OSError, UnicodeDecodeError) as error:
            raise RequestError(f"cannot read {path}: {error}") from None
        if not text.isdigit():
            # Guessing would risk reusing serials that clients have already seen.
            raise RequestError(f"{path} is damaged (expected a number); fix it by hand")
        return max(int(text), self.stored_serial())

    def stored_serial(self) -> int:
        with contextlib.suppress(AuraError):
            signed = SignedManifest.load(self.config.manifest_file)
            if signed is not None:
                return verify(signed, self.ca_key.public_key(), now=None).serial
        return 0


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    if not os.path.exists(config.ca_key_file):
        raise ConfigError(config.ca_key_file, "", "the CA private key (run `aura server init`)")
    signer = Signer(config)
    gid = config.admin_gid
    accounts = Accounts.from_config(config)
    activated = systemd.listen_fds().get("signer")
    # Hand the socket file to the admin group when we may; systemd does it for activated ones.
    may_chown = gid is not None and (os.geteuid() == 0 or gid in os.getgroups())
    listener = await ipc.Listener.start(
        activated[0] if activated else config.signer_socket,
        signer.on_channel,
        # Root and the admin group only: no service account may ask for a manifest.
        lambda peer, claimed: accounts.role_of(peer, claimed, (ADMIN,)),
        lambda peer: accounts.share(peer, (ADMIN,)),
        protocol=TO_SIGNER,
        role="signer",
        group=gid if may_chown and not activated else None,
    )
    where = "socket activation" if activated else config.signer_socket
    log.info("signing bridge manifests on %s", where)
    systemd.ready(f"serving {where}")
    try:
        await asyncio.Event().wait()
    finally:
        await listener.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-signer", "Aura signer: signs bridge manifests.", serve, argv)
