"""Cookie replies under load, mac2 on the retry, cookie expiry and forged replies."""

from __future__ import annotations

from aura_common.addresses import unmapped
from aura_common.wireguard import HandshakeCompleted, Transmit, public_key
from aura_common.wireguard.constants import COOKIE_SECRET_MAX_AGE
from aura_common.wireguard.cookie import cookie_key
from aura_common.wireguard.crypto import xaead_open
from aura_lab.flood import junk_initiation
from tests.unit.wireguard_pair import CLIENT_ADDR, Pair, drop_reasons, of_type, transmits


def test_under_load_a_cookie_reply_and_a_retry_with_mac2_succeeds() -> None:
    pair = Pair(under_load_after=3)
    server_public = public_key(pair.server_key)
    now = 0.0
    initiation = pair.client.initiate(pair.to_server, now)
    # Two junk initiations queued before it: with it, a backlog of three, the load mark.
    batch = [junk_initiation(server_public), junk_initiation(server_public), *transmits(initiation)]
    cookie_reply = pair.server.receive(batch, CLIENT_ADDR, now)
    assert [len(d) for d in transmits(cookie_reply)] == [64]
    assert transmits(initiation)[0][132:148] == bytes(16)  # no cookie yet, no mac2
    client_reply = Transmit(CLIENT_ADDR, transmits(cookie_reply))
    assert pair.at_client([client_reply], now) == []  # cookie stored silently

    now = 0.5  # still under load: it lasts a second
    retry = pair.client.initiate(pair.to_server, now)
    assert transmits(retry)[0][132:148] != bytes(16)  # mac2 now set
    response = pair.at_server(retry, now)
    assert [len(d) for d in transmits(response)] == [92]
    confirmation = pair.at_client(response, now)
    assert of_type(confirmation, HandshakeCompleted)
    assert of_type(pair.at_server(confirmation, now), HandshakeCompleted)


def test_mac2_from_another_source_address_earns_a_new_cookie_reply() -> None:
    pair = Pair(under_load_after=0)
    initiation = pair.client.initiate(pair.to_server, 0.0)
    pair.at_client(pair.at_server(initiation, 0.0), 0.0)
    retry = pair.client.initiate(pair.to_server, 0.1)
    moved = pair.at_server(retry, 0.1, source=("192.0.2.99", CLIENT_ADDR[1]))
    assert [len(d) for d in transmits(moved)] == [64]


def test_cookie_replies_for_nobody_or_forged_are_dropped() -> None:
    pair = Pair(under_load_after=0)
    initiation = pair.client.initiate(pair.to_server, 0.0)
    (reply,) = transmits(pair.at_server(initiation, 0.0))
    forged = reply[:40] + bytes([reply[40] ^ 1]) + reply[41:]
    assert drop_reasons(pair.client.receive([forged], CLIENT_ADDR, 0.0)) == [
        "cookie reply did not authenticate"
    ]
    unknown = b"\x03\0\0\0" + b"\xff\xff\xff\xff" + reply[8:]
    assert drop_reasons(pair.client.receive([unknown], CLIENT_ADDR, 0.0)) == [
        "cookie reply for unknown index"
    ]


def test_cookie_expires_with_the_secret() -> None:
    pair = Pair(under_load_after=0)
    pair.at_client(pair.at_server(pair.client.initiate(pair.to_server, 0.0), 0.0), 0.0)
    later = COOKIE_SECRET_MAX_AGE + 1
    stale = pair.at_server(pair.client.initiate(pair.to_server, later), later)
    assert [len(d) for d in transmits(stale)] == [64]  # a fresh cookie is needed


def test_cookie_replies_are_xchacha20_poly1305_each_with_a_nonce_of_its_own() -> None:
    pair = Pair(under_load_after=0)
    server_public = public_key(pair.server_key)
    junk = [junk_initiation(server_public) for _ in range(3)]
    sources = [(f"192.0.2.{n}", 1000) for n in range(3)]
    replies = [transmits(pair.server.receive([message], source, 1.0))[0]
               for message, source in zip(junk, sources, strict=True)]
    later = COOKIE_SECRET_MAX_AGE + 2.0  # a new secret, and with it a new nonce prefix
    replies.append(transmits(pair.server.receive([junk[0]], ("192.0.2.9", 1), later))[0])
    nonces = [reply[8:32] for reply in replies]
    assert len(set(nonces)) == 4
    assert nonces[0][:16] == nonces[1][:16] == nonces[2][:16] != nonces[3][:16]
    for message, reply in zip([*junk, junk[0]], replies, strict=True):
        # What a stock client does with it: open with the key from our public key and the
        # mac1 it sent as associated data.
        cookie = xaead_open(cookie_key(server_public), reply[8:32], reply[32:64], message[116:132])
        assert len(cookie) == 16


def test_unmapped_shows_ipv4_mapped_addresses_as_ipv4_and_leaves_the_rest() -> None:
    assert unmapped("::ffff:192.0.2.7") == "192.0.2.7"
    assert unmapped("192.0.2.7") == "192.0.2.7"
    assert unmapped("2001:db8::7") == "2001:db8::7"
    assert unmapped("fe80::7%eth0") == "fe80::7%eth0"  # the zone stays: it is needed to reply
