"""The ClientHello reader: real hellos from OpenSSL, every prefix, splits across records and
reads, work linear in the bytes however they are cut, the record and byte bounds, the bytes it
waits for, fuzz."""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from services.tcp import clienthello
from services.tcp.clienthello import (
    MAX_CLIENT_HELLO,
    MAX_RECORDS,
    RECORD_HEADER,
    ClientHello,
    ClientHelloReader,
    NotClientHello,
    Verdict,
    parse_client_hello,
)


def real_client_hello(alpn: list[str] | None, server_name: str | None = "vpn.example") -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def build_hello(extensions: bytes | None, *, session_id: bytes = b"") -> bytes:
    body = b"\x03\x03" + b"\x11" * 32 + bytes([len(session_id)]) + session_id
    body += b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(handshake, len(handshake))


def records(handshake: bytes, size: int) -> bytes:
    out = b""
    for start in range(0, len(handshake), size):
        piece = handshake[start : start + size]
        out += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    return out


def alpn_extension(names: list[bytes]) -> bytes:
    listing = b"".join(bytes([len(n)]) + n for n in names)
    content = len(listing).to_bytes(2, "big") + listing
    return b"\x00\x10" + len(content).to_bytes(2, "big") + content


def test_real_hello_offering_aura() -> None:
    hello = real_client_hello(["aura/1", "h2"])
    assert parse_client_hello(hello) == ClientHello((b"aura/1", b"h2"), "vpn.example")


def test_real_hello_without_alpn_or_sni() -> None:
    assert parse_client_hello(real_client_hello(None, None)) == ClientHello((), None)


def test_every_prefix_asks_for_more() -> None:
    hello = real_client_hello(["aura/1"])
    for cut in range(len(hello)):
        assert parse_client_hello(hello[:cut]) is None
    assert isinstance(parse_client_hello(hello + b"trailing"), ClientHello)


def test_hello_split_over_many_records() -> None:
    handshake = records_payload(build_hello(alpn_extension([b"aura/1"])))
    for size in (1, 3, 7, 50):
        split = records(handshake, size)
        assert parse_client_hello(split) == ClientHello((b"aura/1",), None)
        for cut in range(len(split)):
            assert parse_client_hello(split[:cut]) is None


def records_payload(single_record: bytes) -> bytes:
    return single_record[5:]


def test_hello_fed_in_pieces_of_any_size() -> None:
    split = records(records_payload(build_hello(alpn_extension([b"aura/1"]))), 7)
    for size in (1, 2, 5, 6, 13, 100):
        reader = ClientHelloReader()
        verdicts = [reader.feed(split[i : i + size]) for i in range(0, len(split), size)]
        assert verdicts[-1] == ClientHello((b"aura/1",), None)
        assert verdicts[:-1] == [None] * (len(verdicts) - 1)
        assert reader.received == split


def one_byte_records(hello: bytes) -> list[bytes]:
    """Each byte of the handshake in its own TLS record, each record its own read."""
    handshake = records_payload(hello)
    return [records(handshake[i : i + 1], 1) for i in range(len(handshake))]


def parse_steps(pieces: Sequence[bytes]) -> tuple[int, Verdict | None]:
    """Python lines run inside the reader while it is fed `pieces` one read at a time."""
    steps = 0

    def trace(frame, event, arg):
        nonlocal steps
        if frame.f_code.co_filename != clienthello.__file__:
            return None
        steps += 1
        return trace

    reader, verdict = ClientHelloReader(), None
    sys.settrace(trace)
    try:
        for piece in pieces:
            verdict = reader.feed(piece)
            if verdict is not None:
                break
    finally:
        sys.settrace(None)
    return steps, verdict


def padded_hello(padding: int) -> bytes:
    return build_hello(alpn_extension([b"aura/1"]) + b"\x00\x15" + padding.to_bytes(2, "big")
                       + bytes(padding))


def in_records(hello: bytes, count: int) -> bytes:
    """The handshake message of `hello` cut into `count` records of about equal size."""
    handshake = records_payload(hello)
    return records(handshake, -(-len(handshake) // count))


def test_work_is_linear_in_the_bytes_however_they_are_cut() -> None:
    # A ClientHello of 1,600-odd bytes in MAX_RECORDS records, one byte per read: re-parsing
    # everything read so far on every read cost millions of steps, enough to stall the event
    # loop for seconds; each byte is now looked at once.
    stream = in_records(padded_hello(1600), MAX_RECORDS)
    pieces = [stream[i : i + 1] for i in range(len(stream))]
    steps, verdict = parse_steps(pieces)
    assert verdict == ClientHello((b"aura/1",), None)
    assert steps < 50 * len(pieces)
    whole_steps, _ = parse_steps([stream])
    assert whole_steps < 50 * MAX_RECORDS


def test_records_are_bounded() -> None:
    # Each record costs a turn of the reader: a ClientHello in 1-byte records is refused
    # after MAX_RECORDS of them, however many bytes it still announces.
    pieces = one_byte_records(padded_hello(1600))
    reader, verdict, fed = ClientHelloReader(), None, 0
    for piece in pieces:
        verdict = reader.feed(piece)
        fed += 1
        if verdict is not None:
            break
    assert verdict == NotClientHello(f"ClientHello in more than {MAX_RECORDS} records")
    assert fed == MAX_RECORDS + 1
    assert parse_client_hello(in_records(padded_hello(1600), MAX_RECORDS)) == ClientHello(
        (b"aura/1",), None)


def test_bytes_before_a_verdict_are_bounded() -> None:
    largest = padded_hello(MAX_CLIENT_HELLO - len(padded_hello(0)) + RECORD_HEADER)
    assert len(largest) - RECORD_HEADER == MAX_CLIENT_HELLO
    stream = in_records(largest, MAX_RECORDS)
    assert len(stream) <= MAX_CLIENT_HELLO + MAX_RECORDS * RECORD_HEADER
    assert parse_client_hello(stream) == ClientHello((b"aura/1",), None)
    assert parse_client_hello(in_records(padded_hello(MAX_CLIENT_HELLO), 1)) == NotClientHello(
        "ClientHello too large")


@given(st.integers(min_value=0, max_value=MAX_CLIENT_HELLO - 100),
       st.integers(min_value=1, max_value=MAX_RECORDS), st.integers(min_value=1, max_value=64))
def test_wanted_never_asks_for_more_than_the_hello_still_needs(
        padding: int, count: int, first: int) -> None:
    # The listener does not wake before `wanted` bytes are there: more than a real client
    # sends would leave its connection waiting until the deadline.
    stream = in_records(padded_hello(padding), count)
    reader, position, verdict = ClientHelloReader(), 0, None
    step = first
    while verdict is None:
        assert position < len(stream)
        verdict = reader.feed(stream[position : position + step])
        position += step
        step = reader.wanted
        assert verdict is not None or step <= len(stream) - position
    assert verdict == ClientHello((b"aura/1",), None)


def test_reads_of_wanted_bytes_are_few() -> None:
    # Fed `wanted` bytes at a time, as the listener's socket wakes, a hello in many small
    # records needs a handful of reads, not one per record.
    for padding, count in ((4000, 1), (4000, 8), (4000, MAX_RECORDS), (200, MAX_RECORDS)):
        stream = in_records(padded_hello(padding), count)
        reader, position, reads, verdict = ClientHelloReader(), 0, 0, None
        while verdict is None:
            step = reader.wanted if reads else 1
            verdict = reader.feed(stream[position : position + step])
            position, reads = position + step, reads + 1
        assert verdict == ClientHello((b"aura/1",), None)
        assert reads <= 10, (padding, count, reads)


def test_verdicts_on_what_is_not_a_hello() -> None:
    assert parse_client_hello(b"GET / HTTP/1.1\r\n\r\n") == NotClientHello("not TLS")
    assert parse_client_hello(b"\x16\x02\x00\x00\x05") == NotClientHello(
        "not a TLS record version")
    assert parse_client_hello(b"\x16\x03\x01\x00\x00") == NotClientHello("bad TLS record length")
    server_hello = b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"
    assert isinstance(parse_client_hello(server_hello), NotClientHello)
    huge = b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"
    assert parse_client_hello(huge) == NotClientHello("ClientHello too large")
    assert parse_client_hello(b"") is None


def test_malformed_inside_is_refused_not_raised() -> None:
    duplicate = alpn_extension([b"a"]) * 2
    assert isinstance(parse_client_hello(build_hello(duplicate)), NotClientHello)
    assert isinstance(parse_client_hello(build_hello(alpn_extension([b""]))), NotClientHello)
    assert isinstance(parse_client_hello(build_hello(None, session_id=b"x" * 33)),
                      NotClientHello)
    assert parse_client_hello(build_hello(None)) == ClientHello((), None)


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=40))
def test_built_alpn_offers_round_trip(names: list[bytes], record_size: int) -> None:
    handshake = records_payload(build_hello(alpn_extension(names)))
    record_size = max(record_size, -(-len(handshake) // MAX_RECORDS))
    assert parse_client_hello(records(handshake, record_size)) == ClientHello(tuple(names), None)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_a_verdict_or_ask_for_more(data: bytes) -> None:
    result = parse_client_hello(data)
    assert result is None or isinstance(result, ClientHello | NotClientHello)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_a_record_header(data: bytes) -> None:
    framed = b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data
    result = parse_client_hello(framed)
    assert result is None or isinstance(result, ClientHello | NotClientHello)


@given(st.data())
def test_mutated_real_hello_never_raises(data: st.DataObject) -> None:
    hello = bytearray(real_client_hello(["aura/1"]))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        index = data.draw(st.integers(min_value=0, max_value=len(hello) - 1))
        hello[index] = data.draw(st.integers(min_value=0, max_value=255))
    result = parse_client_hello(bytes(hello))
    assert result is None or isinstance(result, ClientHello | NotClientHello)
