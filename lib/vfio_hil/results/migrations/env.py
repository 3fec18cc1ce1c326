"""Alembic environment of the results store. The store runs the migrations itself
(:func:`vfio_hil.results.store.migrate`) and hands over the connection to run them on, inside
the transaction that serializes migrations between processes."""

from __future__ import annotations

from alembic import context

from vfio_hil.results.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
