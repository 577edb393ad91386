"""The policy store: c2c policies, the tags (groups) they allocate, the last-updated stamp, ASGs.

Same tables as upstream (spec §5): `groups` (the row id is the tag), `destinations`, `policies`,
`policies_info`, `security_groups`. Every write holds one lock id (POLICY_LOCK), so "find the
lowest free tag, then take it" and the "insert if not exists" steps never race between processes
or replicas. Batches are set-based (a handful of statements per batch, not per policy), and the
reads used by the internal API are index-driven, so a cell's fetch stays cheap at 100k policies.

Tags: upstream seeds every tag row up front and a free tag is a row whose guid is NULL. We create
rows on demand instead, always the next id after the highest, and free them the same way (guid =
NULL); the lowest free tag is then the lowest NULL row or, if there is none, the next id. That is
upstream's observable behaviour without seeding 65 535 (or 16.7 million for tag_length 3) rows;
both take the same indexed lookup per batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cfnet.core.errors import ConfigError, StoreError, TagsExhaustedError
from cfnet.core.policy import Policy, SecurityGroup, Tag, TaggedPolicy, max_tag
from cfnet.store.db import Database, Tx
from cfnet.store.migrations import Migration, migrate

POLICY_LOCK = 0x6366_7031  # every policy and tag write (PostgreSQL advisory lock id)
SECURITY_GROUPS_LOCK = 0x6366_7032  # ASG replace, which touches no policy table
NOTIFY_CHANNEL = "cfnet_policies"  # payload: the new last-updated value in nanoseconds
APP = "app"
INT64_MAX = 2**63 - 1

MIGRATIONS = [
    Migration(
        "policy-0001-initial",
        sqlite=(
            "CREATE TABLE groups (id INTEGER PRIMARY KEY, guid TEXT UNIQUE, type TEXT)",
            "CREATE INDEX groups_free ON groups (id) WHERE guid IS NULL",
            "CREATE TABLE destinations (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " group_id INTEGER NOT NULL REFERENCES groups(id), port INTEGER NOT NULL,"
            " protocol TEXT NOT NULL, start_port INTEGER NOT NULL, end_port INTEGER NOT NULL,"
            " UNIQUE (group_id, start_port, end_port, protocol))",
            "CREATE TABLE policies (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " group_id INTEGER NOT NULL REFERENCES groups(id),"
            " destination_id INTEGER NOT NULL REFERENCES destinations(id),"
            " UNIQUE (group_id, destination_id))",
            "CREATE INDEX policies_destination_id ON policies (destination_id)",
            "CREATE TABLE policies_info (id INTEGER PRIMARY KEY, last_updated_us INTEGER NOT NULL)",
            "CREATE TABLE security_groups (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " guid TEXT NOT NULL UNIQUE, name TEXT NOT NULL, rules TEXT NOT NULL DEFAULT '[]',"
            " staging_default INTEGER NOT NULL DEFAULT 0,"
            " running_default INTEGER NOT NULL DEFAULT 0,"
            " staging_spaces TEXT NOT NULL DEFAULT '[]',"
            " running_spaces TEXT NOT NULL DEFAULT '[]')",
        ),
        postgres=(
            "CREATE TABLE groups (id INTEGER PRIMARY KEY, guid TEXT UNIQUE, type TEXT)",
            "CREATE INDEX groups_free ON groups (id) WHERE guid IS NULL",
            # BIGINT ports: v0 has no upper bound and Go's int is 64 bits.
            "CREATE TABLE destinations (id BIGSERIAL PRIMARY KEY,"
            " group_id INTEGER NOT NULL REFERENCES groups(id), port BIGINT NOT NULL,"
            " protocol TEXT NOT NULL, start_port BIGINT NOT NULL, end_port BIGINT NOT NULL,"
            " UNIQUE (group_id, start_port, end_port, protocol))",
            "CREATE TABLE policies (id BIGSERIAL PRIMARY KEY,"
            " group_id INTEGER NOT NULL REFERENCES groups(id),"
            " destination_id BIGINT NOT NULL REFERENCES destinations(id),"
            " UNIQUE (group_id, destination_id))",
            "CREATE INDEX policies_destination_id ON policies (destination_id)",
            "CREATE TABLE policies_info (id INTEGER PRIMARY KEY, last_updated_us BIGINT NOT NULL)",
            "CREATE TABLE security_groups (id BIGSERIAL PRIMARY KEY,"
            " guid TEXT NOT NULL UNIQUE, name TEXT NOT NULL, rules TEXT NOT NULL DEFAULT '[]',"
            " staging_default BOOLEAN NOT NULL DEFAULT false,"
            " running_default BOOLEAN NOT NULL DEFAULT false,"
            " staging_spaces JSONB NOT NULL DEFAULT '[]',"
            " running_spaces JSONB NOT NULL DEFAULT '[]')",
        ),
    ),
    # Settings fixed when the store is first seeded (spec §4: tag_length cannot change later).
    Migration(
        "policy-0002-settings",
        sqlite=("CREATE TABLE policy_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",),
        postgres=("CREATE TABLE policy_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    ),
]

_SELECT_POLICIES = (
    "SELECT p.id, sg.guid, sg.id, dg.guid, dg.id, d.protocol, d.start_port, d.end_port"
    " FROM policies p"
    " JOIN groups sg ON sg.id = p.group_id"
    " JOIN destinations d ON d.id = p.destination_id"
    " JOIN groups dg ON dg.id = d.group_id"
)
# Reads by app guid walk indexes from groups.guid outwards, so a cell's 100 apps never scan the
# policies table. Each engine needs its own phrasing to get that plan (checked with EXPLAIN at
# 100k policies / 20k apps): SQLite plans `IN (json_each)` id subqueries well; PostgreSQL's
# planner prefers seq-scanning a cached `groups` table over 100 index probes, so it gets a
# LATERAL lookup per guid (LIMIT 1 keeps it from being flattened into a hash join).
_SQLITE_IDS_BY_SOURCE = ("SELECT p.id FROM groups g JOIN policies p ON p.group_id = g.id"
                         " WHERE g.guid IN (SELECT value FROM json_each(?))")
_SQLITE_IDS_BY_DEST = ("SELECT p.id FROM groups g JOIN destinations d ON d.group_id = g.id"
                       " JOIN policies p ON p.destination_id = d.id"
                       " WHERE g.guid IN (SELECT value FROM json_each(?))")
_PG_GROUPS = ("SELECT l.id, l.guid FROM unnest(?::text[]) u(guid), LATERAL"
              " (SELECT id, guid FROM groups WHERE groups.guid = u.guid LIMIT 1) l")
_PG_BY_SOURCE = ("SELECT p.id, s.guid, s.id, dg.guid, dg.id, d.protocol, d.start_port, d.end_port"
                 " FROM {s} s JOIN policies p ON p.group_id = s.id"
                 " JOIN destinations d ON d.id = p.destination_id"
                 " JOIN groups dg ON dg.id = d.group_id")
_PG_BY_DEST = ("SELECT p.id, sg.guid, sg.id, t.guid, t.id, d.protocol, d.start_port, d.end_port"
               " FROM {t} t JOIN destinations d ON d.group_id = t.id"
               " JOIN policies p ON p.destination_id = d.id JOIN groups sg ON sg.id = p.group_id")
_PG_BY_BOTH = ("SELECT p.id, s.guid, s.id, t.guid, t.id, d.protocol, d.start_port, d.end_port"
               " FROM s JOIN policies p ON p.group_id = s.id"
               " JOIN destinations d ON d.id = p.destination_id JOIN t ON t.id = d.group_id")


def _now_us() -> int:
    return time.time_ns() // 1000


class PolicyStore:
    def __init__(self, db: Database, tag_length: int = 2) -> None:
        if not 1 <= tag_length <= 3:
            raise ValueError("tag length must be greater than 0 and less than 4")
        self.db = db
        self.tag_length = tag_length
        self.max_tag = max_tag(tag_length)

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations and seed the last-updated row; returns migrations applied."""
        applied = migrate(self.db, MIGRATIONS)
        with self._write() as tx:
            tx.execute("INSERT INTO policies_info (id, last_updated_us) VALUES (1, ?)"
                       " ON CONFLICT DO NOTHING", (_now_us(),))
            tx.execute("INSERT INTO policy_settings (name, value) VALUES ('tag_length', ?)"
                       " ON CONFLICT DO NOTHING", (str(self.tag_length),))
            stored = int(tx.scalar("SELECT value FROM policy_settings WHERE name = 'tag_length'"))
        if stored != self.tag_length:
            raise ConfigError(f"invalid config: key 'tag_length': the database was created with "
                              f"tag_length {stored}, configured {self.tag_length} "
                              "(changing it after seeding is unsupported)")
        return applied

    def check_database(self) -> None:
        """`SELECT 1`; StoreError when the database does not answer."""
        self.db.ping()

    # -- policies --------------------------------------------------------------------------------

    def create(self, policies: list[Policy]) -> None:
        """Store a batch in one transaction: all of it, or nothing. Existing policies are no-ops."""
        if not policies:
            return
        with self._write() as tx:
            stamp = self._bump(tx)
            # Tags go out in upstream's order: each policy's source, then its destination.
            order = [guid for p in policies for guid in (p.source, p.destination)]
            groups = self._app_groups(tx, order)
            dests = {(groups[p.destination], p.port, p.start, p.end, p.protocol): None
                     for p in policies}
            tx.executemany("INSERT INTO destinations (group_id, port, start_port, end_port,"
                           " protocol) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", list(dests))
            ids = self._destination_ids(tx, {g for g, *_ in dests})
            rows = {(groups[p.source],
                     ids[(groups[p.destination], p.start, p.end, p.protocol)]): None
                    for p in policies}
            tx.executemany("INSERT INTO policies (group_id, destination_id) VALUES (?, ?)"
                           " ON CONFLICT DO NOTHING", list(rows))
            self._notify(tx, stamp)

    def delete(self, policies: list[Policy]) -> None:
        """Delete exact matches in one transaction; unknown policies are skipped.

        Destinations nothing references any more are removed and app groups that are neither a
        source nor a destination owner are freed (their tag becomes reusable). The stamp is
        bumped for any non-empty list, even when nothing matched.
        """
        if not policies:
            return
        with self._write() as tx:
            stamp = self._bump(tx)
            guids = {p.source for p in policies} | {p.destination for p in policies}
            groups = {guid: gid for guid, gid, _ in self._groups_by_guid(tx, guids)}
            dest_groups = {groups[p.destination] for p in policies if p.destination in groups}
            ids = self._destination_ids(tx, dest_groups)
            doomed: dict[tuple[int, int], None] = {}
            touched: dict[int, None] = {}
            for p in policies:
                src, dst = groups.get(p.source), groups.get(p.destination)
                dest_id = ids.get((dst, p.start, p.end, p.protocol)) if dst is not None else None
                if src is None or dest_id is None:
                    continue
                doomed[(src, dest_id)] = None
                touched[src] = touched[dst] = None  # type: ignore[index]
            if doomed:
                tx.executemany("DELETE FROM policies WHERE group_id = ? AND destination_id = ?",
                               list(doomed))
                tx.executemany("DELETE FROM destinations WHERE id = ? AND NOT EXISTS"
                               " (SELECT 1 FROM policies WHERE destination_id = ?)",
                               [(d, d) for d in {d: None for _, d in doomed}])
                # Only app groups are freed: tags allocated through I4 are never given back.
                tx.executemany("UPDATE groups SET guid = NULL, type = NULL"
                               " WHERE id = ? AND type = 'app'"
                               " AND NOT EXISTS (SELECT 1 FROM policies WHERE group_id = ?)"
                               " AND NOT EXISTS (SELECT 1 FROM destinations WHERE group_id = ?)",
                               [(g, g, g) for g in touched])
            self._notify(tx, stamp)

    def all(self) -> list[TaggedPolicy]:
        """Every policy, in creation (row id) order."""
        with self.db.transaction() as tx:
            return self._tagged(tx.all(_SELECT_POLICIES + " ORDER BY p.id"))

    def count(self) -> int:
        """How many policies are stored (the `totalPolicies` metric), without loading them."""
        with self.db.transaction() as tx:
            return int(tx.scalar("SELECT COUNT(*) FROM policies"))

    def by_ids(self, ids: list[str]) -> list[TaggedPolicy]:
        """Policies whose source OR destination is in `ids` (the `id` filter)."""
        return self.by_guids(ids, ids)

    def by_guids(self, source_ids: list[str], dest_ids: list[str],
                 both: bool = False) -> list[TaggedPolicy]:
        """Source in `source_ids` OR destination in `dest_ids`; with `both`, AND. Id order."""
        src, dst = list(dict.fromkeys(source_ids)), list(dict.fromkeys(dest_ids))
        if (both and not (src and dst)) or not (src or dst):
            return []
        with self.db.transaction() as tx:
            return self._tagged(self._rows_by_guids(tx, src, dst, both))

    def policy_rows(self, ids: list[str] | None) -> tuple[list[tuple[Any, ...]], int]:
        """The internal fetch without model objects: rows (row id, source, source tag,
        destination, destination tag, protocol, start, end) in row-id order, of every policy
        (`ids` None) or of those whose source or destination is in `ids`; and the stamp in ns.

        The stamp is read after the rows, in the same transaction. Every write bumps it in its own
        transaction, so a caller that read the same stamp before this call knows that no write
        committed in between: the rows are the state at that stamp (even under PostgreSQL's READ
        COMMITTED, where each statement has its own snapshot).
        """
        with self.db.transaction() as tx:
            if ids is None:
                rows = tx.all(_SELECT_POLICIES + " ORDER BY p.id")
            else:
                unique = list(dict.fromkeys(ids))
                rows = self._rows_by_guids(tx, unique, unique, False) if unique else []
            us = tx.scalar("SELECT last_updated_us FROM policies_info WHERE id = 1")
        if us is None:
            raise StoreError("policies_info has no row: run the migrations")
        return rows, int(us) * 1000

    def _rows_by_guids(self, tx: Tx, src: list[str], dst: list[str],
                       both: bool) -> list[tuple[Any, ...]]:
        if tx.dialect == "sqlite":
            sql, params = self._sqlite_by_guids(src, dst, both)
        else:
            sql, params = self._pg_by_guids(src, dst, both)
        return tx.all(sql, params)

    @staticmethod
    def _sqlite_by_guids(src: list[str], dst: list[str], both: bool) -> tuple[str, list[Any]]:
        if both:
            return (_SELECT_POLICIES + " WHERE sg.guid IN (SELECT value FROM json_each(?))"
                    " AND dg.guid IN (SELECT value FROM json_each(?)) ORDER BY p.id",
                    [json.dumps(src), json.dumps(dst)])
        parts, params = [], []
        for sql, guids in ((_SQLITE_IDS_BY_SOURCE, src), (_SQLITE_IDS_BY_DEST, dst)):
            if guids:
                parts.append(sql)
                params.append(json.dumps(guids))
        return (_SELECT_POLICIES + f" WHERE p.id IN ({' UNION '.join(parts)}) ORDER BY p.id",
                params)

    @staticmethod
    def _pg_by_guids(src: list[str], dst: list[str], both: bool) -> tuple[str, list[Any]]:
        if both:
            return (f"WITH s AS MATERIALIZED ({_PG_GROUPS}), t AS MATERIALIZED ({_PG_GROUPS}) "
                    f"{_PG_BY_BOTH} ORDER BY 1", [src, dst])
        if src == dst:  # the `id` filter: one lookup serves both sides
            return (f"WITH s AS MATERIALIZED ({_PG_GROUPS}) {_PG_BY_SOURCE.format(s='s')}"
                    f" UNION {_PG_BY_DEST.format(t='s')} ORDER BY 1", [src])
        ctes, parts, params = [], [], []
        if src:
            ctes.append(f"s AS MATERIALIZED ({_PG_GROUPS})")
            parts.append(_PG_BY_SOURCE.format(s="s"))
            params.append(src)
        if dst:
            ctes.append(f"t AS MATERIALIZED ({_PG_GROUPS})")
            parts.append(_PG_BY_DEST.format(t="t"))
            params.append(dst)
        return f"WITH {', '.join(ctes)} {' UNION '.join(parts)} ORDER BY 1", params

    def count_by_source(self, guids: list[str]) -> dict[str, int]:
        """How many policies each app already has as source (0 for unknown apps)."""
        counts = dict.fromkeys(guids, 0)
        if not guids:
            return counts
        if self.db.dialect == "sqlite":
            groups = "(SELECT id, guid FROM groups WHERE guid IN (SELECT value FROM json_each(?)))"
        else:
            groups = f"({_PG_GROUPS})"
        with self.db.transaction() as tx:
            rows = tx.all(f"SELECT g.guid, COUNT(*) FROM {groups} g"
                          " JOIN policies p ON p.group_id = g.id GROUP BY g.guid",
                          (self._list(tx, dict.fromkeys(guids)),))
        counts.update({guid: int(n) for guid, n in rows})
        return counts

    def last_updated_ns(self) -> int:
        """The stamp agents poll: microseconds since the epoch, as nanoseconds."""
        with self.db.transaction() as tx:
            us = tx.scalar("SELECT last_updated_us FROM policies_info WHERE id = 1")
        if us is None:
            raise StoreError("policies_info has no row: run the migrations")
        return int(us) * 1000

    # -- tags ------------------------------------------------------------------------------------

    def tags(self) -> list[Tag]:
        """Every allocated tag, app and other types alike, ordered by tag."""
        with self.db.transaction() as tx:
            rows = tx.all("SELECT guid, id, type FROM groups WHERE guid IS NOT NULL ORDER BY id")
        return [Tag(guid, int(tag), kind) for guid, tag, kind in rows]

    def create_tag(self, guid: str, type: str) -> Tag:
        """A tag for any group (I4). Same guid and type: the same tag; another type: StoreError."""
        with self._write() as tx:
            row = tx.one("SELECT id, type FROM groups WHERE guid = ?", (guid,))
            if row is not None:
                if row[1] != type:
                    raise StoreError(f"group '{guid}' already has a tag of type '{row[1]}'")
                return Tag(guid, int(row[0]), type)
            (tag,) = self._allocate(tx, [guid], type)
        return Tag(guid, tag, type)

    # -- security groups -------------------------------------------------------------------------

    def replace_security_groups(self, groups: list[SecurityGroup]) -> None:
        """Make the table hold exactly `groups`, in one transaction; existing guids keep ids."""
        with self.db.transaction(write=True, lock=SECURITY_GROUPS_LOCK) as tx:
            cast = "::jsonb" if tx.dialect == "postgres" else ""
            tx.executemany(
                "INSERT INTO security_groups (guid, name, rules, staging_default, running_default,"
                f" staging_spaces, running_spaces) VALUES (?, ?, ?, ?, ?, ?{cast}, ?{cast})"
                " ON CONFLICT (guid) DO UPDATE SET name = excluded.name, rules = excluded.rules,"
                " staging_default = excluded.staging_default,"
                " running_default = excluded.running_default,"
                " staging_spaces = excluded.staging_spaces,"
                " running_spaces = excluded.running_spaces",
                [(g.guid, g.name, g.rules, bool(g.staging_default), bool(g.running_default),
                  json.dumps(list(g.staging_spaces)), json.dumps(list(g.running_spaces)))
                 for g in groups])
            guids = [g.guid for g in groups]
            if tx.dialect == "sqlite":
                tx.execute("DELETE FROM security_groups"
                           " WHERE guid NOT IN (SELECT value FROM json_each(?))",
                           (json.dumps(guids),))
            else:
                tx.execute("DELETE FROM security_groups WHERE guid <> ALL(?::text[])", (guids,))

    def security_groups(self, space_guids: list[str] | None, from_id: int = 0,
                        limit: int = 0) -> tuple[list[SecurityGroup], int]:
        """Global groups plus those bound to any of `space_guids`, in id order, one page.

        Returns (page, next): `next` is the id of the first row after the page, or 0.
        """
        if from_id > INT64_MAX:  # no row can have such an id (and SQLite cannot bind it)
            return [], 0
        limit = min(limit, INT64_MAX - 1)
        with self.db.transaction() as tx:
            where = "staging_default OR running_default"
            params: list[Any] = []
            if space_guids:
                for column in ("staging_spaces", "running_spaces"):
                    if tx.dialect == "sqlite":
                        where += (f" OR EXISTS (SELECT 1 FROM json_each(security_groups.{column})"
                                  " WHERE value IN (SELECT value FROM json_each(?)))")
                    else:
                        where += f" OR jsonb_exists_any({column}, ?::text[])"
                    params.append(self._list(tx, space_guids))
            sql = ("SELECT id, guid, name, rules, staging_default, running_default, staging_spaces,"
                   f" running_spaces FROM security_groups WHERE ({where})")
            if from_id > 0:
                sql += " AND id >= ?"
                params.append(from_id)
            sql += " ORDER BY id"
            if limit > 0:
                sql += " LIMIT ?"
                params.append(limit + 1)
            rows = tx.all(sql, params)
        next_id = 0
        if limit > 0 and len(rows) > limit:
            next_id = int(rows[limit][0])
            rows = rows[:limit]
        return [_security_group(row) for row in rows], next_id

    # -- internals -------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self.db.transaction(write=True, lock=POLICY_LOCK) as tx:
            yield tx

    @staticmethod
    def _bump(tx: Tx) -> int:
        """Advance the stamp strictly (new = max(now, old + 1) in µs); returns it in ns."""
        now = _now_us()
        us = tx.scalar("UPDATE policies_info SET last_updated_us = CASE WHEN ? > last_updated_us"
                       " THEN ? ELSE last_updated_us + 1 END WHERE id = 1"
                       " RETURNING last_updated_us",
                       (now, now))
        if us is None:
            raise StoreError("policies_info has no row: run the migrations")
        return int(us) * 1000

    @staticmethod
    def _notify(tx: Tx, stamp_ns: int) -> None:
        """Wake long-polls on every replica; PostgreSQL delivers it only if we commit."""
        if tx.dialect == "postgres":
            tx.execute("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, str(stamp_ns)))

    @staticmethod
    def _in(tx: Tx, column: str, kind: str = "text") -> str:
        """`column` is in a list given as one parameter (see `_list`): one plan for any length."""
        if tx.dialect == "sqlite":
            return f"{column} IN (SELECT value FROM json_each(?))"
        return f"{column} = ANY(?::{kind}[])"

    @staticmethod
    def _list(tx: Tx, values: Iterable[Any]) -> Any:
        return json.dumps(list(values)) if tx.dialect == "sqlite" else list(values)

    def _groups_by_guid(self, tx: Tx, guids: Iterable[str]) -> list[tuple[str, int, str]]:
        return [(guid, int(gid), kind) for guid, gid, kind in
                tx.all(f"SELECT guid, id, type FROM groups WHERE {self._in(tx, 'guid')}",
                       (self._list(tx, set(guids)),))]

    def _app_groups(self, tx: Tx, guids: Sequence[str]) -> dict[str, int]:
        """The `app` group id of every guid, allocating tags for new ones in order of appearance."""
        found: dict[str, int] = {}
        for guid, gid, kind in self._groups_by_guid(tx, guids):
            if kind != APP:
                raise StoreError(f"group '{guid}' already has a tag of type '{kind}'")
            found[guid] = gid
        missing = [g for g in dict.fromkeys(guids) if g not in found]
        if missing:
            found.update(zip(missing, self._allocate(tx, missing, APP), strict=True))
        return found

    def _allocate(self, tx: Tx, guids: list[str], kind: str) -> list[int]:
        """Take the lowest free tags for `guids` (distinct, none holding a tag), in order."""
        tags = [int(r[0]) for r in tx.all(
            "SELECT id FROM groups WHERE guid IS NULL AND id <= ? ORDER BY id LIMIT ?",
            (self.max_tag, len(guids)))]
        reused = len(tags)
        top = int(tx.scalar("SELECT COALESCE(MAX(id), 0) FROM groups"))
        tags += range(top + 1, min(top + len(guids) - reused, self.max_tag) + 1)
        if len(tags) < len(guids):
            raise TagsExhaustedError(f"failed to find available tag: all {self.max_tag} tags "
                                     f"are in use (tag length {self.tag_length})")
        tx.executemany("UPDATE groups SET guid = ?, type = ? WHERE id = ?",
                       [(g, kind, t) for g, t in zip(guids[:reused], tags[:reused], strict=True)])
        tx.executemany("INSERT INTO groups (id, guid, type) VALUES (?, ?, ?)",
                       [(t, g, kind) for g, t in zip(guids[reused:], tags[reused:], strict=True)])
        return tags

    def _destination_ids(self, tx: Tx,
                         group_ids: Iterable[int]) -> dict[tuple[int, int, int, str], int]:
        """(group, start, end, protocol) -> destination id, for every destination of the groups."""
        group_ids = list(group_ids)
        if not group_ids:
            return {}
        rows = tx.all("SELECT id, group_id, start_port, end_port, protocol FROM destinations"
                      f" WHERE {self._in(tx, 'group_id', 'bigint')}", (self._list(tx, group_ids),))
        return {(int(g), int(s), int(e), proto): int(i) for i, g, s, e, proto in rows}

    def _tagged(self, rows: list[tuple[Any, ...]]) -> list[TaggedPolicy]:
        return [TaggedPolicy(Policy(src, dst, proto, int(start), int(end)), int(stag), int(dtag))
                for _, src, stag, dst, dtag, proto, start, end in rows]


def _security_group(row: tuple[Any, ...]) -> SecurityGroup:
    _, guid, name, rules, staging, running, staging_spaces, running_spaces = row
    if isinstance(staging_spaces, str):  # SQLite keeps JSON as text; psycopg decodes jsonb
        staging_spaces, running_spaces = json.loads(staging_spaces), json.loads(running_spaces)
    return SecurityGroup(guid=guid, name=name, rules=rules, staging_default=bool(staging),
                         running_default=bool(running), staging_spaces=tuple(staging_spaces),
                         running_spaces=tuple(running_spaces))
