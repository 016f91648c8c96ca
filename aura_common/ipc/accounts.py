"""Who is who on the Unix sockets: the role of a connecting process, decided by its uid.

Every service runs as its own system user (`users:` in server.yaml). A process that connects
names a role in its `hello`, but that claim only has to agree with what its SO_PEERCRED uid
already says:

* root may act for any role: it can read every key and ptrace every service anyway. So may the
  listener's own uid when it is no service account (a developer running everything as
  themself), for the same reason.
* a service account is exactly its role (a transport account cannot claim another
  transport, nor `admin`);
* `admin` is a member of the admin group (primary or supplementary) that is no service
  account;
* anyone else is refused.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from aura_common.config import ServerConfig
from aura_common.ipc import Credentials, NotPermitted
from aura_common.roles import SERVICE_ROLES

ADMIN = "admin"


class RoleRefused(NotPermitted):
    """The peer may not act in the role it asked for (the message says why)."""


def _group_member(uid: int, gid: int, group: int) -> bool:
    """True if `uid` (primary group `gid`) belongs to `group` per the group database.

    SO_PEERCRED carries only the primary gid, so supplementary groups are looked up: an
    operator added to the admin group with `usermod -aG` is recognised.
    """
    if gid == group:
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    return group in os.getgrouplist(name, gid)


@dataclass(frozen=True)
class Accounts:
    """The uid of every service account that exists here, and the admin group."""

    roles_by_uid: Mapping[int, frozenset[str]]
    admin_gid: int | None
    own_uid: int = field(default_factory=os.getuid)
    member: Callable[[int, int, int], bool] = _group_member

    @classmethod
    def from_config(cls, config: ServerConfig) -> Accounts:
        roles: dict[int, set[str]] = {}
        for role in SERVICE_ROLES:
            uid = user_id(getattr(config.users, role))
            if uid is not None and uid != 0:
                roles.setdefault(uid, set()).add(role)
        return cls({uid: frozenset(r) for uid, r in roles.items()}, config.admin_gid)

    def admits(self, peer: Credentials, served: Collection[str]) -> bool:
        """Whether `peer` may take any of the roles `served`: asked before its hello is read,
        so a caller with no role here costs the listener an accept and a close."""
        for role in served:
            try:
                self.role_of(peer, role, served)
            except RoleRefused:
                continue
            return True
        return False

    def share(self, peer: Credentials, served: Collection[str]) -> str | None:
        """The share of a listener's hello slots `peer` waits in (aura_common.ipc.listener), or
        None when it may take none of the roles `served`. Root and each service account have
        their own; the admin group's members, however many, share one, so they can never
        fill the slots a transport needs to reconnect."""
        if not self.admits(peer, served):
            return None
        if peer.uid in (0, self.own_uid) or peer.uid in self.roles_by_uid:
            return f"uid {peer.uid}"
        return "the admin group"

    def role_of(self, peer: Credentials, claimed: str, served: Collection[str]) -> str:
        """The role `peer` acts in, which is `claimed`; RoleRefused when its uid says otherwise."""
        if claimed not in served:
            raise RoleRefused(f"role {claimed!r} is not served here")
        if peer.uid == 0 or (peer.uid == self.own_uid and self.own_uid not in self.roles_by_uid):
            return claimed
        service = self.roles_by_uid.get(peer.uid)
        if service is not None:
            if claimed in service:
                return claimed
            raise RoleRefused(
                f"uid {peer.uid} is the {'/'.join(sorted(service))} account, not {claimed}"
            )
        if claimed == ADMIN and self.admin_gid is not None and self.member(
            peer.uid, peer.gid, self.admin_gid
        ):
            return ADMIN
        raise RoleRefused(f"uid {peer.uid} may not act as {claimed}")


def user_id(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def own_account_admits(peer: Credentials) -> str | None:
    """For a process's private socket (the client's control socket): root and its own uid,
    each in a share of its own."""
    return f"uid {peer.uid}" if peer.uid in (0, os.getuid()) else None


def own_account_only(peer: Credentials, claimed: str) -> str:
    if own_account_admits(peer) is not None:
        return claimed
    raise RoleRefused(f"uid {peer.uid} is neither root nor this process's user")
