"""Users, roles and API tokens. Tokens are shown once and stored only as their sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import Conflict, InvalidInput, NotFound, Unauthorized
from storage.models import Role, User
from storage.names import clean_name

TOKEN_PREFIX = "lw_"
# Within the name policy, user names keep to ASCII: they are typed on command lines, and SQL's lower(), which
# keeps them unique ignoring case, then agrees on SQLite and PostgreSQL.
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$"
_NAME = re.compile(USER_NAME_PATTERN)
MAX_USER_NAME_LENGTH = 100


@dataclass(frozen=True)
class Principal:
    """Who is calling: a detached snapshot of the user, safe to pass around after the session ends."""

    id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _principal(user: User) -> Principal:
    return Principal(id=user.id, name=user.name, role=user.role)


def check_user_name(name: str) -> str:
    """The name as stored (the name policy's NFC, spaces trimmed); InvalidInput when it is no valid user name."""
    name = clean_name(name, what="user name", code="invalid_user_name", max_length=MAX_USER_NAME_LENGTH)
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid user name {name!r}: use 1-100 letters, digits, '_', '.', '@' or '-', starting with a letter "
            "or digit",
            code="invalid_user_name",
        )
    return name


def create_user(session: Session, *, name: str, role: Role, token: str | None = None) -> tuple[User, str]:
    """Create a user; returns the user and their token (the only time it is visible).

    Names are unique ignoring case: ``ADMIN`` beside ``admin`` is a Conflict."""
    name = check_user_name(name)
    existing = find_user(session, name=name)
    if existing is not None:
        raise _exists(name, existing)
    token = token or new_token()
    user = User(name=name, role=role, token_hash=hash_token(token))
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:  # created meanwhile by a concurrent request
        raise _exists(name, find_user(session, name=name)) from None
    return user, token


def _exists(name: str, existing: User | None) -> Conflict:
    taken = f" as {existing.name!r}" if existing is not None and existing.name != name else ""
    return Conflict(
        f"a user named {name!r} already exists{taken} (user names are compared ignoring case); choose another name",
        code="user_exists",
    )


def find_user(session: Session, *, name: str) -> User | None:
    """The user of that name, ignoring case, as it is unique (user names are ASCII: any other names nobody)."""
    if not name.isascii():
        return None
    return session.scalar(select(User).where(func.lower(User.name) == name.lower()))


def get_user_by_name(session: Session, *, name: str) -> User:
    user = find_user(session, name=name)
    if user is None:
        raise NotFound(f"no user named {name!r}", code="user_not_found")
    return user


def get_user(session: Session, *, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def rotate_token(session: Session, *, name: str) -> str:
    """Give the user a new token; the old one stops working at once."""
    user = get_user_by_name(session, name=name)
    token = new_token()
    user.token_hash = hash_token(token)
    session.flush()
    return token


def authenticate(session: Session, *, token: str | None) -> Principal:
    query = select(User.id, User.name, User.role).where(User.token_hash == hash_token(token)) if token else None
    return authenticate_row(token, None if query is None else session.execute(query).first())


def authenticate_row(token: str | None, row: Sequence[Any] | None) -> Principal:
    """The caller from the (id, name, role) their token's hash found; Unauthorized without a token or a row."""
    if not token:
        raise Unauthorized("missing API token: send the header 'Authorization: Bearer <token>'", code="missing_token")
    if row is None:
        raise Unauthorized("invalid API token: check it, or ask an admin for a new one", code="invalid_token")
    return Principal(id=row[0], name=row[1], role=row[2])


def ensure_admin(session: Session, *, token: str | None, name: str = "admin") -> str | None:
    """Make sure an admin can sign in after start; returns a newly made token to show, if any.

    With ``token`` (LABELWHEEL_ADMIN_TOKEN) the admin named ``name`` gets exactly that token.
    Without it, a first start creates the admin with a random token; later starts return None.
    """
    user = find_user(session, name=name)
    no_admin = user is None and session.scalar(select(User.id).where(User.role == Role.admin).limit(1)) is None
    if user is None and (token is not None or no_admin):
        try:
            _, made = create_user(session, name=name, role=Role.admin, token=token)
        except Conflict:  # API replicas starting together: another one made it a moment ago
            user = find_user(session, name=name)
        else:
            return None if token is not None else made
    if token is not None and user is not None:
        user.role = Role.admin
        user.token_hash = hash_token(token)
        session.flush()
    return None
