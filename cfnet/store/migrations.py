"""Numbered schema migrations, each applied in one transaction together with its record.

A migration interrupted half-way (crash, kill, lost connection) rolls back whole, so running the
migrations again simply continues. Several processes migrating at once are serialised by the
write lock; the second finds the work done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from cfnet.store.db import Database

MIGRATION_LOCK = 0x6366_6E65  # advisory lock id for migrations (PostgreSQL)


@dataclass(frozen=True)
class Migration:
    id: str  # globally unique, ordered within its list, e.g. "policy-0001-initial"
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def migrate(db: Database, migrations: list[Migration]) -> int:
    """Apply the migrations not yet recorded; returns how many were applied."""
    with db.transaction(write=True, lock=MIGRATION_LOCK) as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                   "(id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied = 0
    for m in migrations:
        with db.transaction(write=True, lock=MIGRATION_LOCK) as tx:
            if tx.one("SELECT 1 FROM schema_migrations WHERE id = ?", (m.id,)):
                continue
            for statement in (m.sqlite if db.dialect == "sqlite" else m.postgres):
                tx.execute(statement)
            tx.execute("INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)",
                       (m.id, datetime.now(timezone.utc).isoformat()))
            applied += 1
    return applied
