"""ofnotify's own database: typed models and the engine.

Tables:
- `registrations`: devices that registered a push token by ad-hoc command;
- `outbox`: every decided notification, as a row, before anything is sent;
- `delivery_log`: every attempt and every decision not to send (cancelled, skipped),
  which is what `ofnotify deliveries` reads.

Times are stored as naive UTC and handed out timezone-aware (SQLite keeps no zone).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; use utcnow()")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        return value.replace(tzinfo=dt.UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Registration(Base):
    """One device (or one device and MUC) of one account, registered for push."""

    __tablename__ = "registrations"
    __table_args__ = (UniqueConstraint("account", "device_id", "muc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(3071), index=True)  # bare JID
    device_id: Mapped[str] = mapped_column(String(255))
    # '' rather than NULL: NULLs never collide in a unique constraint.
    muc: Mapped[str] = mapped_column(String(3071), default="")
    channel: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(Text)
    node: Mapped[str] = mapped_column(String(64), unique=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)

    @property
    def domain(self) -> str:
        return self.account.rpartition("@")[2]


class OutboxStatus:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutboxItem(Base):
    """A notification that was decided and must be sent (or consciously dropped)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Same key twice = same notification (a second source seeing the same message).
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    event: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default="xep0357")
    account: Mapped[str] = mapped_column(String(3071), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    registration_id: Mapped[int | None] = mapped_column(
        ForeignKey("registrations.id", ondelete="SET NULL"), nullable=True
    )
    conversation: Mapped[str] = mapped_column(String(3071), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DeliveryLogEntry(Base):
    """One line of "why did I (not) get this?"."""

    __tablename__ = "delivery_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    outbox_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    account: Mapped[str] = mapped_column(String(3071), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="-")  # always shortened
    status: Mapped[str] = mapped_column(String(24))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class MessageState:
    UNREAD = "unread"
    DELIVERED = "delivered"  # Openfire handed it to a client (the row vanished)
    READ = "read"  # a displayed/acknowledged marker covered it


class MissedMessage(Base):
    """A message someone has not seen yet, as the watcher found it in ofOffline."""

    __tablename__ = "missed_messages"
    __table_args__ = (Index("ix_missed_messages_account_state", "account", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(3071))  # recipient, bare JID
    conversation: Mapped[str] = mapped_column(String(3071))  # other party, bare JID
    source_key: Mapped[str] = mapped_column(String(255), unique=True)  # of:<user>:<id>
    stanza_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)  # only if privacy allows
    encrypted: Mapped[bool] = mapped_column(default=False)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=MessageState.UNREAD)
    state_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ReadState(Base):
    """Per account and conversation: what was delivered, what was displayed."""

    __tablename__ = "read_state"

    account: Mapped[str] = mapped_column(String(3071), primary_key=True)
    conversation: Mapped[str] = mapped_column(String(3071), primary_key=True)
    unread_count: Mapped[int] = mapped_column(Integer, default=0)
    last_delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_displayed_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_displayed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DigestCursor(Base):
    """Per account and channel: what the last digest covered and when it went out."""

    __tablename__ = "digest_cursors"

    account: Mapped[str] = mapped_column(String(3071), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_message_id: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WatcherState(Base):
    """Where the Openfire watcher stopped reading, so a restart neither repeats nor skips."""

    __tablename__ = "watcher_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # one row per Openfire
    high_message_id: Mapped[int] = mapped_column(Integer, default=0)
    cursor_ms: Mapped[int] = mapped_column(BigInteger, default=0)  # creationDate, epoch ms
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


def dialect_insert(session: AsyncSession) -> Any:
    """INSERT with ON CONFLICT support for the session's database (SQLite or PostgreSQL)."""
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def async_url(url: str) -> str:
    """Accept the URLs operators write and pick the async driver for them."""
    scheme, _sep, rest = url.partition("://")
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("mysql", "mariadb"):  # Openfire on MySQL/MariaDB (watcher only)
        return f"mysql+aiomysql://{rest}"
    return url


def make_engine(url: str, *, pre_ping: bool = True) -> AsyncEngine:
    """`pre_ping=False` saves a round trip per checkout where a failed query is simply
    retried later anyway (the Openfire watcher polls again)."""
    url = async_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the CLI read while the service writes; NORMAL is durable
            # against process crashes (the promise we make), not power loss.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=pre_ping, pool_size=10, max_overflow=10)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (Alembic); a no-op when it is there."""
    from .migrate import upgrade

    await upgrade(engine)
