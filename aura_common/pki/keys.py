"""WireGuard key files: base64 text, one key per file, as `wg genkey` writes them."""

from __future__ import annotations

from pathlib import Path

from aura_common.config import ServerConfig, decode_key
from aura_common.errors import ConfigError
from aura_common.wireguard import generate_private_key, public_key


def read_key_file(path: str | Path) -> bytes:
    try:
        text = Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(path, "", f"a readable key file ({error.strerror})") from None
    try:
        return decode_key(text)
    except ValueError:
        raise ConfigError(path, "", "a base64-encoded 32-byte key") from None


def load_server_private_key(config: ServerConfig) -> bytes:
    return read_key_file(config.server_key_file)


def load_server_public_key(config: ServerConfig) -> bytes:
    """What a transport knows of the server's key (the router alone holds the private one)."""
    return read_key_file(config.server_public_key_file)


def server_public_key(config: ServerConfig) -> bytes:
    return public_key(load_server_private_key(config))


def new_key_pair() -> tuple[bytes, bytes]:
    private = generate_private_key()
    return private, public_key(private)

