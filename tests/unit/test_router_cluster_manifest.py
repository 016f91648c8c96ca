"""A manifest signed on another member of the cluster reaches this member's clients: the
router adopts the newest that verifies against its CA, and never goes back to an older one."""

from __future__ import annotations

import asyncio
import datetime
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.config import ServerConfig
from aura_common.ipc.frames import Packets
from aura_common.pki import ca
from aura_common.pki.manifest import HostPorts, Manifest, SignedManifest, sign
from aura_common.state.atomic import write_atomic
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wire.control import decode_control
from services.router.main import Router, serial_of
from tests.unit.router_fakes import FakeTransport, claim, new_router


def signed(serial: int, key: ed25519.Ed25519PrivateKey) -> SignedManifest:
    return sign(Manifest.create(serial=serial, issued=datetime.datetime.now(datetime.UTC),
                                expires_days=30, server_public_key=bytes(32),
                                endpoints=[HostPorts("10.88.1.2", udp=8443),
                                           HostPorts("10.88.2.2", udp=8443)]), key)


def test_the_newest_verified_manifest_from_the_cluster_is_pushed_and_kept(
    tmp_path: Path,
) -> None:
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example", "state_dir": str(tmp_path / "state"),
        "key_dir": str(tmp_path / "keys"),
    })
    ca.create_ca(tmp_path / "keys")
    Path(config.manifest_file).parent.mkdir(parents=True)
    ca_key = ca.load_ca_private_key_file(config.ca_key_file)
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2"))

    async def scenario() -> tuple[Router, FakeTransport]:
        router = new_router(config)
        link = FakeTransport()
        router.transports[link] = "udp"  # type: ignore[index]
        claim(router, link, "alice")
        write_atomic(config.manifest_file, signed(3, ca_key).to_json().encode(), 0o644)
        router.load_manifest()
        router.adopt_manifest(signed(2, ca_key))  # older: ignored
        router.adopt_manifest(signed(9, ed25519.Ed25519PrivateKey.generate()))  # not our CA
        assert serial_of(router.manifest) == 3
        router.adopt_manifest(signed(7, ca_key))
        router.load_manifest()  # the local file is older: the cluster's stays
        await asyncio.sleep(0)
        return router, link

    router, link = asyncio.run(scenario())
    assert serial_of(router.manifest) == 7
    welcomes = [decode_control(f.batches[0][1][0]) for f in link.frames if isinstance(f, Packets)]
    # The welcome (no manifest yet), then the adopted one.
    assert [serial_of(w.manifest) for w in welcomes if w is not None] == [0, 7]


def test_a_fifo_or_endless_file_in_place_of_the_manifest_does_not_stall_the_router(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The signer's account writes the manifest file and may put anything there: the router
    reads it on its event loop, so a FIFO nobody writes would freeze every tunnel until the
    watchdog, and /dev/zero would take all memory. Each is one warning, at once."""
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example", "state_dir": str(tmp_path / "state"),
        "key_dir": str(tmp_path / "keys"),
    })
    ca.create_ca(tmp_path / "keys")
    manifest = Path(config.manifest_file)
    manifest.parent.mkdir(parents=True)
    for trap in ("fifo", "/dev/zero"):
        if trap == "fifo":
            os.mkfifo(manifest)
        else:
            manifest.symlink_to(trap)
        router = new_router(config)
        loaded = threading.Thread(target=router.load_manifest, daemon=True)
        loaded.start()
        loaded.join(10)
        if loaded.is_alive():  # let the stuck reader go before failing
            os.close(os.open(manifest, os.O_WRONLY | os.O_NONBLOCK))
        assert not loaded.is_alive(), f"the router stalled on a {trap} manifest"
        assert router.manifest is None
        assert f"cannot read the bridge manifest {manifest}" in caplog.text
        manifest.unlink()
        caplog.clear()
