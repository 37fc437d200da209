"""The tokens a listener accepts, each with a role and a name: the keyring.

A token file holds one `role name secret` per line (blank lines and `#`
comments aside). The single `--token`/$SHOAL_TOKEN of a cluster is a keyring
of one admin token, as before roles existed. Secrets never leave this
module's objects: their repr hides them, and nothing here logs them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.protocol.permissions import ADMIN, Role

log = logging.getLogger(__name__)

# A secret in a token file is at least this long: it is guessed offline by anyone
# who records a proof (docs/protocol.md, section 12).
MIN_SECRET_CHARS = 16
MAX_NAME_CHARS = 100
# The name of the one token of a cluster started with --token / $SHOAL_TOKEN.
SINGLE_TOKEN_NAME = "cluster"


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its role, its name (for logs and the audit log), its secret."""

    role: Role
    name: str
    secret: bytes = field(repr=False)


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and the line."""


def parse_tokens(text: str, source: str = "the token file") -> list[Token]:
    """The tokens of a token file's text.

    Raises:
        TokenFileError: a line that is not `role name secret`, an unknown role, a
            name or secret given twice, a secret shorter than MIN_SECRET_CHARS,
            or no token at all.
    """
    tokens: list[Token] = []
    names: set[str] = set()
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        parts = line.split()
        if len(parts) != 3:
            raise TokenFileError(f"{where}: expected 'role name secret', got {len(parts)} words")
        role_text, name, secret_text = parts
        try:
            role = Role(role_text)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise TokenFileError(f"{where}: unknown role {role_text[:40]!r} ({known})") from None
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise TokenFileError(f"{where}: a name is printable, at most {MAX_NAME_CHARS} chars")
        if len(secret_text) < MIN_SECRET_CHARS or not secret_text.isprintable():
            raise TokenFileError(
                f"{where}: the secret of {name!r} must be at least {MIN_SECRET_CHARS} "
                "printable characters (make one with `shoal token new`)"
            )
        secret = secret_text.encode()
        if name in names:
            raise TokenFileError(f"{where}: the name {name!r} is given twice")
        if secret in seen:
            raise TokenFileError(f"{where}: {name!r} has the secret of an earlier line")
        names.add(name)
        seen.add(secret)
        tokens.append(Token(role, name, secret))
    if not tokens:
        raise TokenFileError(f"{source} holds no token")
    return tokens


def read_token_file(path: str) -> list[Token]:
    """The tokens of the file at `path`; a WARNING when others may read it.

    Raises:
        TokenFileError: unreadable, or see parse_tokens.
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the token file {path!r}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s may be read by others (mode %o): chmod 600 it", path, mode)
    return parse_tokens(text, repr(path))


def new_token_line(role: Role, name: str) -> str:
    """A fresh `role name secret` line for a token file (256 random bits).

    Raises:
        TokenFileError: a name that a token file could not hold.
    """
    if not name or any(c.isspace() for c in name):
        raise TokenFileError(f"a token's name is one word, without spaces: {name!r}")
    line = f"{role.value} {name} {secrets.token_urlsafe(32)}"
    parse_tokens(line, "the new token")  # the same checks as reading it back
    return line


class Keyring:
    """The tokens a listener accepts; replaced as a whole when its file is reloaded.

    Listeners hold the keyring, not its tokens, so a reload applies to every
    connection that starts after it.
    """

    def __init__(self, tokens: Iterable[Token], path: str | None = None) -> None:
        self.tokens: tuple[Token, ...] = tuple(tokens)
        self.path = path  # the token file, when the tokens came from one

    @classmethod
    def single(cls, secret: bytes) -> Keyring:
        """A cluster's one token, which has the admin role."""
        return cls([Token(ADMIN, SINGLE_TOKEN_NAME, secret)])

    @classmethod
    def from_file(cls, path: str) -> Keyring:
        """The tokens of a token file.

        Raises:
            TokenFileError: see read_token_file.
        """
        return cls(read_token_file(path), path)

    def __repr__(self) -> str:
        return (
            f"<Keyring of {len(self.tokens)} token(s){' from ' + self.path if self.path else ''}>"
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def match(self, proof_of: Callable[[bytes], bytes], given: bytes) -> Token | None:
        """The token whose proof (`proof_of(secret)`) equals `given`, or None.

        Every token is tried, each compared in constant time, so the answer's
        timing tells nothing about which one matched, or how many there are
        before it.
        """
        found = None
        for token in self.tokens:
            if secrets.compare_digest(proof_of(token.secret), given) and found is None:
                found = token
        return found

    def holding(self, secret: bytes) -> Token | None:
        """The token whose secret is `secret` (an HTTP bearer token), or None; every
        token is compared, in constant time, as in `match`."""
        digest = hashlib.sha256  # equal lengths: the comparison says nothing of length
        return self.match(lambda own: digest(own).digest(), digest(secret).digest())

    def first(self, *roles: Role) -> Token | None:
        """The first token of the first of `roles` that has one (the one a process
        given a token file connects with)."""
        for role in roles:
            for token in self.tokens:
                if token.role is role:
                    return token
        return None

    def holds(self, token: Token) -> bool:
        """Whether `token` is still one of these, with the same role and secret."""
        return token in self.tokens

    def reload(self) -> tuple[list[str], list[str], list[str]]:
        """Read the file again and take its tokens: (added, removed, changed) names.

        Raises:
            TokenFileError: the file cannot be used; the tokens stay as they were.
        """
        if self.path is None:
            return [], [], []
        new = read_token_file(self.path)
        old = {t.name: t for t in self.tokens}
        fresh = {t.name: t for t in new}
        added = [name for name in fresh if name not in old]
        removed = [name for name in old if name not in fresh]
        changed = [name for name in fresh if name in old and old[name] != fresh[name]]
        self.tokens = tuple(new)
        return added, removed, changed
