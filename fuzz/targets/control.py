"""In-tunnel control messages the client receives from the server (aura_common/wire/control.py).

Contract: `decode_control` returns None (not a control message) or a ControlMessage, or
raises ControlError; a decoded message stays within the documented counts and re-encodes.
"""

from __future__ import annotations

from aura_common.wire import control

MAX_LEN = 70_000


def test_one_input(data: bytes) -> None:
    try:
        message = control.decode_control(data)
    except control.ControlError:
        return
    if message is None:
        assert not control.is_control(data)
        return
    assert len(message.address) <= control.MAX_ADDRESSES
    assert len(message.dns) <= control.MAX_DNS
    assert len(message.routes) <= control.MAX_ROUTES
    again = control.decode_control(control.encode_control(message))
    assert again == message, (again, message)
