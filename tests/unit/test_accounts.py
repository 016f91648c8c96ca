"""The role of a process on a Unix socket is decided by its uid, never by its hello."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import uuid

import pytest

from aura_common.config import ServerConfig, ServiceUsers
from aura_common.ipc import Credentials
from aura_common.ipc.accounts import Accounts, RoleRefused, _group_member

ROUTER_SERVES = ("udp", "tcp", "quic", "admin")
ROUTER, UDP, TCP, QUIC, SIGNER = 901, 902, 903, 904, 905
ADMIN_GID, OPERATOR, STRANGER = 800, 1000, 1001


def fake_member(uid: int, gid: int, group: int) -> bool:
    return gid == group or (uid, group) == (OPERATOR, ADMIN_GID)


ACCOUNTS = Accounts(
    {ROUTER: frozenset({"router"}), UDP: frozenset({"udp"}), TCP: frozenset({"tcp"}),
     QUIC: frozenset({"quic"}), SIGNER: frozenset({"signer"})},
    ADMIN_GID, own_uid=ROUTER, member=fake_member,
)  # fmt: skip


def as_uid(uid: int, gid: int = 999) -> Credentials:
    return Credentials(pid=4242, uid=uid, gid=gid)


@pytest.mark.parametrize("role", ROUTER_SERVES)
def test_root_may_act_for_every_role(role: str) -> None:
    assert ACCOUNTS.role_of(as_uid(0, 0), role, ROUTER_SERVES) == role


@pytest.mark.parametrize(("uid", "role"), [(UDP, "udp"), (TCP, "tcp"), (QUIC, "quic")])
def test_a_transport_account_is_its_own_transport_and_nothing_else(uid: int, role: str) -> None:
    assert ACCOUNTS.role_of(as_uid(uid), role, ROUTER_SERVES) == role
    for other in ROUTER_SERVES:
        if other != role:
            with pytest.raises(RoleRefused, match=f"uid {uid} is the {role} account"):
                ACCOUNTS.role_of(as_uid(uid), other, ROUTER_SERVES)


def test_a_service_account_in_the_admin_group_is_still_no_admin() -> None:
    with pytest.raises(RoleRefused):
        ACCOUNTS.role_of(as_uid(UDP, ADMIN_GID), "admin", ROUTER_SERVES)
    with pytest.raises(RoleRefused):
        ACCOUNTS.role_of(as_uid(SIGNER, ADMIN_GID), "admin", ("admin",))


def test_admin_group_members_are_admin_only() -> None:
    assert ACCOUNTS.role_of(as_uid(OPERATOR), "admin", ROUTER_SERVES) == "admin"
    assert ACCOUNTS.role_of(as_uid(1002, ADMIN_GID), "admin", ("admin",)) == "admin"
    with pytest.raises(RoleRefused, match="may not act as udp"):
        ACCOUNTS.role_of(as_uid(OPERATOR), "udp", ROUTER_SERVES)


def test_strangers_and_unserved_roles_are_refused() -> None:
    with pytest.raises(RoleRefused, match=f"uid {STRANGER} may not act as admin"):
        ACCOUNTS.role_of(as_uid(STRANGER), "admin", ROUTER_SERVES)
    with pytest.raises(RoleRefused, match="not served here"):
        ACCOUNTS.role_of(as_uid(0, 0), "signer", ROUTER_SERVES)
    with pytest.raises(RoleRefused, match="not served here"):
        ACCOUNTS.role_of(as_uid(UDP), "udp", ("admin",))


def test_only_callers_with_a_role_served_there_are_admitted_at_all() -> None:
    for uid in (0, UDP, TCP, QUIC, OPERATOR):
        assert ACCOUNTS.admits(as_uid(uid), ROUTER_SERVES)
    for uid in (STRANGER, SIGNER, ROUTER):  # the router's own account is no caller's role
        assert not ACCOUNTS.admits(as_uid(uid), ROUTER_SERVES)
    assert ACCOUNTS.admits(as_uid(OPERATOR), ("admin",))  # the signer's socket
    assert not ACCOUNTS.admits(as_uid(UDP, ADMIN_GID), ("admin",))


def test_the_listeners_own_account_is_trusted_only_when_it_is_no_service_account() -> None:
    developer = Accounts({UDP: frozenset({"udp"})}, None, own_uid=OPERATOR, member=fake_member)
    assert developer.role_of(as_uid(OPERATOR), "tcp", ROUTER_SERVES) == "tcp"
    with pytest.raises(RoleRefused):  # the router's own account claiming a transport
        ACCOUNTS.role_of(as_uid(ROUTER), "udp", ROUTER_SERVES)


def test_accounts_come_from_the_users_in_the_config() -> None:
    nobody = pwd.getpwnam("nobody")
    users = ServiceUsers(router="root", udp="nobody", tcp="no-such-user-aura", quic="nobody")
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example",
        "users": {"router": "root", "udp": "nobody", "tcp": "no-such-user-aura", "quic": "nobody"},
    })  # fmt: skip
    assert config.users == users
    accounts = Accounts.from_config(config)
    # root is never a service account; a missing user is none; one user may hold two roles.
    assert accounts.roles_by_uid == {nobody.pw_uid: frozenset({"udp", "quic"})}


def test_supplementary_group_members_are_recognised() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throw-away user and group")
    suffix = uuid.uuid4().hex[:8]
    group, user = f"aura-tg-{suffix}", f"aura-tu-{suffix}"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "-G", group, user], check=True)
        try:
            entry = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid
            assert entry.pw_gid != gid  # membership only through the supplementary list
            assert _group_member(entry.pw_uid, entry.pw_gid, gid)
            assert not _group_member(entry.pw_uid, entry.pw_gid, gid + 100000)
        finally:
            subprocess.run(["userdel", user], check=True)
    finally:
        subprocess.run(["groupdel", group], check=True)
