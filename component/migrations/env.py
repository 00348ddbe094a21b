"""Alembic environment: migrations run on a connection that ofnotify hands over.

`component.migrate.upgrade` opens the (async) engine and passes a sync connection in
`config.attributes["connection"]`; there is no alembic.ini and no offline mode.
"""

from __future__ import annotations

from alembic import context

from component.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `ofnotify db upgrade` (or `ofnotify run`)")

# Batch mode: SQLite cannot ALTER most things in place.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
