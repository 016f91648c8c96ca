"""A systemd generator: the transports' socket units listen where server.yaml says.

Installed as /usr/lib/systemd/system-generators/aura-generator. systemd runs it at boot and on
every `daemon-reload`, before any unit starts; it writes one drop-in per transport socket into
the generator directory:

    aura-udp.socket.d/50-aura-listen.conf   [Socket] ListenDatagram= (reset), ListenDatagram=PORT

so `transports.<name>.listen` and `.port` in /etc/aura/server.yaml are the one source of truth
for ports, also under socket activation. On a cluster member (`registry:` set) it also hands
the router the secrets only root can read, as credentials:

    aura-router.service.d/50-aura-registry.conf   [Service] LoadCredential=cluster.key:...
                                                  (and registry-password: registry.password_file)
 Generators run early and must never hold up boot: a
missing file (before `aura server init`) writes nothing; a broken one writes nothing and leaves
one line on stderr (the journal); the units' own defaults then apply.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from aura_common.config import ServerConfig, format_host_port
from aura_common.errors import AuraError
from aura_common.roles import Transport

CONFIG = "/etc/aura/server.yaml"
DROP_IN = "50-aura-listen.conf"
REGISTRY_DROP_IN = "aura-router.service.d/50-aura-registry.conf"
# The socket units' listen directive per transport.
DIRECTIVES = {
    Transport.UDP: "ListenDatagram",
    Transport.TCP: "ListenStream",
    Transport.QUIC: "ListenDatagram",
}
ANY_ADDRESS = ("::", "")


def listen_address(listen: str, port: int) -> str:
    """What the socket unit listens on: a bare port for "::" (both families, the units set
    BindIPv6Only=both), else ADDRESS:PORT."""
    return str(port) if listen in ANY_ADDRESS else format_host_port(listen, port)


def drop_ins(config: ServerConfig) -> dict[str, str]:
    """Relative path of each drop-in -> its text."""
    files = {}
    for name, directive in DIRECTIVES.items():
        transport = config.transports.listener(name)
        files[f"aura-{name}.socket.d/{DROP_IN}"] = (
            f"# Written by aura-generator from {config.path} (transports.{name}); "
            "edit that file, then `systemctl daemon-reload`.\n"
            "[Socket]\n"
            f"{directive}=\n"
            f"{directive}={listen_address(transport.listen, transport.port)}\n"
        )
    if config.registry is not None:
        credentials = [f"LoadCredential=cluster.key:{unit_path(config.cluster_key_file)}\n"]
        if config.registry.password_file:
            credentials.append(
                f"LoadCredential=registry-password:{unit_path(config.registry.password_file)}\n")
        files[REGISTRY_DROP_IN] = (
            f"# Written by aura-generator from {config.path} (registry); "
            "edit that file, then `systemctl daemon-reload`.\n"
            "[Service]\n" + "".join(credentials)
        )
    return files


def unit_path(path: str) -> str:
    """A path as a unit file value: `%` starts a specifier there."""
    return path.replace("%", "%%")


def generate(config_path: str, directory: str) -> None:
    try:
        config = ServerConfig.load(config_path)
    except AuraError as error:
        if os.path.exists(config_path):
            print(f"aura-generator: {error}; the socket units keep their default ports",
                  file=sys.stderr)
        return
    for relative, text in drop_ins(config).items():
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: aura-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    try:
        generate(CONFIG, args[0])
    except Exception as error:  # a generator must never fail the boot
        print(f"aura-generator: {error!r}; the socket units keep their default ports",
              file=sys.stderr)
    return 0
