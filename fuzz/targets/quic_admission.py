"""What aura-quic reads from a datagram no connection claims: the destination connection id
it routes by, qh3's header parser, the Retry token check, and a new server connection fed the
datagram (as `_open` does once a token is valid).

Contract: `destination_cid` never raises and returns at most 255 bytes of the input; the header
parser raises only ValueError; a token the fuzzer made never opens; a server connection takes
any datagram and answers without raising.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from qh3._hazmat import Buffer
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import pull_quic_header

from aura_common.config import QuicConfig
from aura_common.pki import ca
from aura_common.quic.link import CONNECTION_ID_LENGTH
from services.quic.carrier import destination_cid, server_configuration
from services.quic.retry import RetryTokens

MAX_LEN = 2048
ADDRESS = ("192.0.2.1", 40000)
_KEYS = Path(tempfile.mkdtemp(prefix="fuzz-quic-"))
atexit.register(shutil.rmtree, _KEYS)
ca.create_ca(_KEYS)
ca.issue_tls_certificate(ca.load_ca_private_key(_KEYS), ["127.0.0.1"], _KEYS)
CONFIGURATION = server_configuration(QuicConfig(), str(_KEYS / "tls.crt"), str(_KEYS / "tls.key"))
TOKENS = RetryTokens()


def test_one_input(data: bytes) -> None:
    cid = destination_cid(data)
    assert len(cid) <= 255 and cid in data, cid
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
    except ValueError:
        return
    try:
        TOKENS.validate_token(address=ADDRESS, destination_cid=header.destination_cid,
                              token=header.token, now=0.0)
    except ValueError:
        pass
    else:
        raise AssertionError("a token this process never issued opened")
    quic = QuicConnection(configuration=CONFIGURATION,
                          original_destination_connection_id=header.destination_cid,
                          retry_source_connection_id=header.destination_cid)
    quic.receive_datagram(data, ADDRESS, now=0.0)
    quic.datagrams_to_send(now=0.0)
