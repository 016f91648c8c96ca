"""The TCP listener's ClientHello pre-parser: the first bytes of every TCP connection.

Contract: `parse_client_hello` never raises; it returns None (incomplete, needs more bytes),
NotClientHello or ClientHello; a verdict on a prefix is final (more bytes never turn a
NotClientHello into a ClientHello); the result holds no more bytes than the input; while a
prefix of a ClientHello is incomplete, the bytes the reader waits for (`wanted`, the listener's
SO_RCVLOWAT) never exceed what the ClientHello still has to send.
"""

from __future__ import annotations

from services.tcp.clienthello import (
    ClientHello,
    ClientHelloReader,
    NotClientHello,
    parse_client_hello,
)

MAX_LEN = 20_000


def test_one_input(data: bytes) -> None:
    verdict = parse_client_hello(data)
    assert verdict is None or isinstance(verdict, ClientHello | NotClientHello), verdict
    if isinstance(verdict, ClientHello):
        assert sum(len(p) for p in verdict.alpn) + len(verdict.server_name or "") <= len(data)
    # The listener feeds bytes as they arrive: a prefix's verdict must stand.
    cut = len(data) // 2
    early = parse_client_hello(data[:cut])
    if early is not None:
        assert type(early) is type(verdict), (early, verdict)
    if isinstance(verdict, ClientHello) and early is None:
        reader = ClientHelloReader()
        assert reader.feed(data[:cut]) is None
        assert reader.wanted <= len(data) - cut, (reader.wanted, len(data), cut)
