"""Which directory a lab owns, and which lab owns a namespace prefix.

A lab directory holds `.cfnet-lab` (written when `up` takes the directory), so `down` never
deletes a directory that is not a lab's. A namespace prefix belongs to one lab directory at a
time: `/run/cfnet-lab/PREFIX.owner` names it, so a second lab with the same prefix refuses to
start instead of destroying the first one's namespaces.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cfnet.net import netns

MARKER = ".cfnet-lab"
OWNERS = Path(os.environ.get("CFNET_LAB_RUN_DIR", "/run/cfnet-lab"))
APP_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def check_app_name(name: str) -> None:
    """App names become namespace names and paths: lowercase letters, digits and dashes only."""
    if not APP_NAME.fullmatch(name):
        raise ValueError(f"bad app name {name!r}: use 1-32 lowercase letters, digits and dashes "
                         "(not at either end)")


def is_lab_dir(directory: Path) -> bool:
    return (directory / MARKER).is_file() or (directory / "state.json").is_file()


def created_by_lab(directory: Path) -> bool:
    try:
        return bool(json.loads((directory / MARKER).read_text()).get("created"))
    except (OSError, ValueError, AttributeError):
        return False


def claim_dir(directory: Path) -> None:
    """Take `directory` for a lab: refuse a non-empty directory that is not a lab's."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    if directory.exists() and any(directory.iterdir()) and not is_lab_dir(directory):
        raise ValueError(f"{directory} is not empty and holds no lab: choose another --dir")
    if is_lab_dir(directory):
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"created": created}) + "\n")


def live_namespaces(prefix: str) -> list[str]:
    return [n for n in netns.names() if n.startswith(prefix + "-")]


def _owner_file(prefix: str) -> Path:
    return OWNERS / f"{prefix}.owner"


def owner(prefix: str) -> Path | None:
    """The directory owning `prefix`, if it is recorded."""
    try:
        return Path(_owner_file(prefix).read_text().strip())
    except OSError:
        return None


def other_owner(prefix: str, directory: Path) -> Path | None:
    """Another directory whose lab holds namespaces of `prefix`, or None."""
    current = owner(prefix)
    if current is None or current == directory.resolve():
        return None
    return current if live_namespaces(prefix) else None


def claim_prefix(prefix: str, directory: Path) -> None:
    other = other_owner(prefix, directory)
    if other is not None:
        raise ValueError(f"a lab in {other} uses the namespace prefix {prefix!r}: run "
                         f"`cfnet lab down --dir {other}` first, or set CFNET_LAB_PREFIX to "
                         "another prefix")
    OWNERS.mkdir(parents=True, exist_ok=True)
    tmp = _owner_file(prefix).with_suffix(".tmp")
    tmp.write_text(f"{directory.resolve()}\n")
    tmp.replace(_owner_file(prefix))


def release_prefix(prefix: str, directory: Path) -> None:
    if owner(prefix) == directory.resolve():
        _owner_file(prefix).unlink(missing_ok=True)


def remove_lab_files(directory: Path) -> None:
    """Remove the lab's files: the directory if the lab created it, else what is inside it."""
    import shutil

    if created_by_lab(directory):
        shutil.rmtree(directory)
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
