"""Who is who on the internal plane: callers, their certificate identities and files.

A caller is one of mxfed's parts, the operator (the ``mxfed`` CLI) or a
local actor (a bot or bridge). Its certificate names it with a SAN URI
(``mxfed:part/events``, ``mxfed:operator``, ``mxfed:actor/<name>``); its
certificate, key and the CA certificate live in one identity directory
(``part-events/``, ``operator/``, ``actor-<name>/``) under the internal TLS
directory. A part's certificate also names ``<part>.mxfed.internal``, the
fixed server name clients check whatever address they dial.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from mxfed.config import PART_NAMES

CA_CERTIFICATE_FILE = "ca.crt"
CERTIFICATE_FILE = "tls.crt"
PRIVATE_KEY_FILE = "tls.key"
SERVER_NAME_SUFFIX = ".mxfed.internal"

_ACTOR_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class CallerKind(enum.Enum):
    PART = "part"
    OPERATOR = "operator"
    ACTOR = "actor"


@dataclass(frozen=True)
class Caller:
    """Who is on the calling end of an internal channel."""

    kind: CallerKind
    name: str = ""

    @classmethod
    def part(cls, name: str) -> Caller:
        if name not in PART_NAMES:
            raise ValueError(f"unknown part {name!r}; known: {', '.join(PART_NAMES)}")
        return cls(CallerKind.PART, name)

    @classmethod
    def actor(cls, name: str) -> Caller:
        if not _ACTOR_NAME.match(name):
            raise ValueError(
                f"actor name {name!r}: 1-64 of a-z 0-9 . _ - (starting with a letter or digit)"
            )
        return cls(CallerKind.ACTOR, name)

    @property
    def uri(self) -> str:
        """The SAN URI its certificate carries."""
        if self.kind is CallerKind.OPERATOR:
            return "mxfed:operator"
        return f"mxfed:{self.kind.value}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Caller:
        """The caller a SAN URI names; ValueError when it names none."""
        if uri == "mxfed:operator":
            return OPERATOR
        scheme, _, rest = uri.partition(":")
        kind, _, name = rest.partition("/")
        if scheme == "mxfed" and kind == CallerKind.PART.value:
            return cls.part(name)
        if scheme == "mxfed" and kind == CallerKind.ACTOR.value:
            return cls.actor(name)
        raise ValueError(f"{uri!r} names no mxfed caller")

    def __str__(self) -> str:
        return self.uri


OPERATOR = Caller(CallerKind.OPERATOR)


def identity_directory(tls_dir: Path, caller: Caller) -> Path:
    """Where ``caller``'s certificate, key and CA certificate live."""
    if caller.kind is CallerKind.OPERATOR:
        return tls_dir / "operator"
    return tls_dir / f"{caller.kind.value}-{caller.name}"


def server_name_of(part: str) -> str:
    """The name a part's certificate serves under, whatever address it is dialled at."""
    return f"{part}{SERVER_NAME_SUFFIX}"
