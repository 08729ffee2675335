"""Users, password hashes and the JWT blocklist.

Passwords are hashed with scrypt (werkzeug's default). Revoked tokens go to Redis when it is
configured and to the database otherwise, so every gunicorn worker sees a logout at once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis import Redis
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app.errors import ConflictError, ValidationError
from app.store.database import Database
from app.store.orm import RevokedToken, User

log = logging.getLogger(__name__)

# A real hash to compare against when the user does not exist, so a wrong username costs as
# much time as a wrong password and does not reveal which usernames exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password")
MIN_PASSWORD_LENGTH = 8


class UserService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create_user(self, username: str, password: str) -> User:
        username = username.strip()
        if not username or len(username) > 64:
            raise ValidationError("username must be 1 to 64 characters", field="username")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValidationError(
                f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password"
            )
        user = User(username=username, password_hash=generate_password_hash(password))
        try:
            with self._db.session() as session:
                session.add(user)
        except IntegrityError:
            raise ConflictError(f"user {username!r} already exists", field="username") from None
        return user

    def set_password(self, username: str, password: str) -> None:
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise ValidationError(f"no user {username!r}", field="username")
            user.password_hash = generate_password_hash(password)

    def authenticate(self, username: str, password: str) -> User | None:
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
        if user is None or not user.is_active:
            check_password_hash(_DUMMY_HASH, password)
            return None
        return user if check_password_hash(user.password_hash, password) else None

    def active_user(self, username: str) -> User | None:
        """The user a token names, if it still exists and may log in."""
        with self._db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
        return user if user is not None and user.is_active else None

    def ensure_admin(self, username: str, password: str) -> bool:
        """Create the configured admin if absent; an existing user keeps its own password."""
        with self._db.session() as session:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                return False
        try:
            self.create_user(username, password)
        except ConflictError:  # another process created it first
            return False
        log.info("created admin user %r", username)
        return True


class TokenBlocklist:
    """Revoked JWT ids and login families, shared by every process of the service.

    A family (every token of one login, refreshed ones included) is stored as one more id,
    `family:<id>`, so both backends keep a single list.
    """

    FAMILY_PREFIX = "family:"

    def __init__(self, db: Database, redis: Redis | None, prefix: str = "alpha:revoked:") -> None:
        self._db = db
        self._redis = redis
        self._prefix = prefix

    def revoke(self, jti: str, expires_at: datetime) -> None:
        ttl = max(1, int((expires_at - datetime.now(UTC)).total_seconds()) + 1)
        if self._redis is not None:
            self._redis.set(self._prefix + jti, "1", ex=ttl)
            return
        with self._db.session() as session:
            session.merge(RevokedToken(jti=jti, expires_at=expires_at))
            session.execute(delete(RevokedToken).where(RevokedToken.expires_at < datetime.now(UTC)))

    def revoke_family(self, family: str, expires_at: datetime) -> None:
        """Revoke every token of one login until the last of them has expired."""
        self.revoke(self.FAMILY_PREFIX + family, expires_at)

    def is_revoked(self, jti: str, family: str | None = None) -> bool:
        ids = [jti] if family is None else [jti, self.FAMILY_PREFIX + family]
        if self._redis is not None:
            return bool(self._redis.exists(*(self._prefix + i for i in ids)))
        with self._db.session() as session:
            found = session.scalar(select(RevokedToken.jti).where(RevokedToken.jti.in_(ids)))
            return found is not None
