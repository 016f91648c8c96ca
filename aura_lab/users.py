"""Code run as another local account: a forked child drops to the account (with its groups),
acts, and reports a JSON-able outcome to the parent. For the tests of who may use which
socket and file."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable
from typing import Any


def as_user(user: pwd.struct_passwd, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What `action` returned in a forked child that has become `user`, or
    `{"unexpected": ...}` naming what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop, act, report, exit without cleanup
        try:
            os.close(read_end)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            outcome = action()
        except BaseException as error:  # reported to the parent
            outcome = {"unexpected": repr(error)}
        os.write(write_end, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result
