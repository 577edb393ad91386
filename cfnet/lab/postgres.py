"""The lab's own PostgreSQL server, inside the control-plane namespace.

Namespaces cannot reach the machine's 127.0.0.1, so `cfnet lab up --db postgres` runs a cluster
of its own: `initdb` as the `postgres` user (PostgreSQL refuses to run as root) into the lab
directory, `postgres` listening on the control plane's 127.0.0.1 only (its roles run there too),
trust authentication on that loopback, one database per role. Durability settings are off: it
is a lab. The cluster lives in `<lab>/postgres`, or, when the `postgres` user cannot reach the
lab directory (a 0700 parent, as pytest's temporary directories have), in
`/var/tmp/<prefix>-postgres`; `cfnet lab down` removes it either way.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cfnet.store.db import DatabaseConfig

PORT = 5432
USER = "postgres"
DATABASES = {"policy-server": "policy_server", "silk-controller": "silk_controller"}


class PostgresError(RuntimeError):
    """The lab's PostgreSQL could not be set up; the message says why."""


def bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                            "run scripts/setup.sh")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", *argv]


def fallback_dir(prefix: str) -> Path:
    return Path("/var/tmp") / f"{prefix}-postgres"


def cluster_dir(lab_dir: Path, prefix: str) -> Path:
    """Where the cluster goes: in the lab directory if the postgres user can reach it."""
    probe = subprocess.run(_as_postgres(["test", "-x", str(lab_dir)]), capture_output=True)
    return lab_dir / "postgres" if probe.returncode == 0 else fallback_dir(prefix)


def init(data: Path) -> None:
    """initdb into `data` (which must not exist yet), as the postgres user."""
    try:
        owner = pwd.getpwnam(USER)
    except KeyError:
        raise PostgresError("no `postgres` user on this machine: install PostgreSQL") from None
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    os.chown(data, owner.pw_uid, owner.pw_gid)
    os.chmod(data, 0o700)
    proc = subprocess.run(_as_postgres([str(bin_dir() / "initdb"), "-D", str(data), "-U", USER,
                                        "--auth=trust", "-E", "UTF8", "--no-sync"]),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PostgresError(f"initdb failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


def server_argv(data: Path) -> list[str]:
    """The postmaster, on 127.0.0.1 of the namespace it runs in, no unix socket."""
    return _as_postgres([str(bin_dir() / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                         "-p", str(PORT), "-k", "", "-c", "fsync=off",
                         "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                         "-c", "max_connections=200", "-c", "shared_buffers=32MB"])


def create_databases(ns: str) -> None:
    from cfnet.net import netns

    for name in DATABASES.values():
        netns.run(ns, [str(bin_dir() / "createdb"), "-h", "127.0.0.1", "-p", str(PORT),
                       "-U", USER, name], timeout=60)


def role_database(role: str) -> DatabaseConfig:
    """The database config of a lab role on the lab's own server."""
    return DatabaseConfig(type="postgres", user=USER, host="127.0.0.1", port=PORT,
                          database_name=DATABASES[role], timeout=10)


def from_url(url: str) -> DatabaseConfig:
    """`postgresql://user[:password]@host[:port]/database` as a database config block."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or not parts.username:
        raise PostgresError(f"--db {url!r}: expected sqlite, postgres or "
                            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    return DatabaseConfig(type="postgres", user=unquote(parts.username),
                          password=unquote(parts.password or ""), host=parts.hostname,
                          port=parts.port or PORT, database_name=parts.path.lstrip("/"),
                          timeout=10)


def remove(data: Path) -> None:
    if data.exists():
        shutil.rmtree(data, ignore_errors=True)
