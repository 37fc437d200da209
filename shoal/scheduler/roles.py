"""Who may do what on the scheduler, and the record of who did: a mixin of the core.

Each connection has the role of the token it proved (shoal.protocol.permissions;
admin where the cluster uses no token). `_permitted` checks every message
against the permission table before the core acts on it, and answers a refused
one with a reason naming the role it needs. `_audit` emits the Audit commands
the shell writes to the audit log (audit.py) when the scheduler keeps one.
Pure, like the core: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.protocol import messages as m
from shoal.protocol.escape import peer_text
from shoal.protocol.permissions import ADMIN, DATA_PORT, PERMISSIONS, Role, Roles, needed, refusal
from shoal.protocol.schema import Message
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import Audit
from shoal.scheduler.tally import key_prefix

# The keys of one message looked at for their prefixes in the audit log: a graph
# of a million tasks is not walked for it (the count is exact, the prefixes of
# the keys past this many are not read).
AUDIT_KEYS_SCANNED = 10_000
# The prefixes named in one audit line; the count says how many there were.
MAX_PREFIXES = 20
_ADMIN_ONLY: Roles = frozenset({ADMIN})
_REGISTRATIONS = (m.RegisterWorker, m.RegisterClient, m.RegisterNanny)


def _passes(role: Role) -> frozenset[type[Message]]:
    """The message types a connection of `role` sends with no further check."""
    return frozenset(
        cls for cls, roles in PERMISSIONS.items() if role in roles and cls is not m.CancelKeys
    ) | ({m.CancelKeys} if role is ADMIN else set())


_PASSES = {role: _passes(role) for role in Role}


class Grant:
    """What one connection may do: its token's role and name, and the message
    types it may send with no further check (the core's fast path)."""

    __slots__ = ("passes", "role", "token")

    def __init__(self, role: Role, token: str) -> None:
        self.role = role
        self.token = token
        self.passes = _PASSES[role]

    def __repr__(self) -> str:
        return f"<Grant {self.role} {self.token!r}>"


ANYTHING = Grant(ADMIN, "")  # a connection to a scheduler that uses no token


def key_summary(keys: Iterable[object], count: int) -> dict[str, object]:
    """The audit fields that describe `count` keys: how many, and their prefixes."""
    prefixes: dict[str, None] = {}
    for i, key in enumerate(keys):
        if i >= AUDIT_KEYS_SCANNED or len(prefixes) >= MAX_PREFIXES:
            break
        prefixes[peer_text(key_prefix(key), 60)] = None
    return {"keys": count, "prefixes": list(prefixes)}


class RoleChecks(CoreBase):
    """The role check of each message and the audit events (see SchedulerState)."""

    def _permitted(self, peer: str, msg: Message) -> bool:
        """Whether `peer` may send `msg`; if not, the refusal is queued and audited.

        Messages that no listener accepts (an empty row) and those of a worker's
        data port pass: the core's own checks close the connection that sent
        one. So do the messages of a peer that has not registered: it is refused
        its registration, or closed.
        """
        grant = self.grants.get(peer, ANYTHING)
        cls = type(msg)
        roles = needed(cls)
        what = msg.op
        if roles and grant.role not in roles and cls not in DATA_PORT:
            registered = peer in self.workers or peer in self.clients or peer in self.nannies
            if not registered and cls not in _REGISTRATIONS:
                return True
        elif cls is m.CancelKeys and msg.force and grant.role is not ADMIN:  # type: ignore[attr-defined]
            roles, what = _ADMIN_ONLY, "cancel-keys with force (other clients' keys)"
        else:
            return True
        reason = refusal(what, roles, grant.role, grant.token)
        if cls is m.RegisterWorker:
            self._send(peer, m.RegistrationRefused(reason=reason))
        else:
            keys = msg.wanted if cls is m.SubmitGraph else ()  # type: ignore[attr-defined]
            if cls is m.AddData:
                keys = tuple(msg.who_has)  # type: ignore[attr-defined]
            request_id = getattr(msg, "request_id", 0)
            self._send(
                peer,
                m.RequestRefused(request=msg.op, reason=reason, request_id=request_id, keys=keys),
            )
        self._audit(
            "request-refused",
            conn=peer,
            op=msg.op,
            role=grant.role.value,
            token=grant.token,
            reason=reason,
        )
        return False

    def _audit(self, event: str, **fields: object) -> None:
        """Queue one audit-log event (when the scheduler keeps a log)."""
        if self.audit:
            self._out.append(Audit(event, fields))

    def _token_of(self, peer: str) -> str:
        return self.grants.get(peer, ANYTHING).token
