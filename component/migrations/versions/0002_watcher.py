"""Watcher: missed messages, read state, digest cursors, watcher position; outbox.source.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from component.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows queued before the watcher existed all came from XEP-0357 publishes.
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="xep0357")
        )
    op.create_table(
        "missed_messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account", sa.String(3071), nullable=False),
        sa.Column("conversation", sa.String(3071), nullable=False),
        sa.Column("source_key", sa.String(255), nullable=False),
        sa.Column("stanza_id", sa.String(255), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("encrypted", sa.Boolean(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_changed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_missed_messages")),
        sa.UniqueConstraint("source_key", name=op.f("uq_missed_messages_source_key")),
    )
    op.create_index("ix_missed_messages_account_state", "missed_messages", ["account", "state"])
    op.create_table(
        "read_state",
        sa.Column("account", sa.String(3071), nullable=False),
        sa.Column("conversation", sa.String(3071), nullable=False),
        sa.Column("unread_count", sa.Integer(), nullable=False),
        sa.Column("last_delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_displayed_id", sa.String(255), nullable=True),
        sa.Column("last_displayed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("account", "conversation", name=op.f("pk_read_state")),
    )
    op.create_table(
        "digest_cursors",
        sa.Column("account", sa.String(3071), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("last_message_id", sa.Integer(), nullable=False),
        sa.Column("last_sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("account", "channel", name=op.f("pk_digest_cursors")),
    )
    op.create_table(
        "watcher_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("high_message_id", sa.Integer(), nullable=False),
        sa.Column("cursor_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watcher_state")),
    )


def downgrade() -> None:
    op.drop_table("watcher_state")
    op.drop_table("digest_cursors")
    op.drop_table("read_state")
    op.drop_index("ix_missed_messages_account_state", table_name="missed_messages")
    op.drop_table("missed_messages")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("source")
