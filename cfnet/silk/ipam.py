"""Address bookkeeping on a cell: host-local IPAM files and the silk container store.

`HostLocal` keeps the on-disk format of the CNI `host-local` plugin, so a cell can switch between
it and cfnet in either direction, and tools that read those files keep working:

    <dataDir>/ipam/<network name>/<ip>                 "<containerID>\\r\\n<ifname>"
    <dataDir>/ipam/<network name>/last_reserved_ip.0   the last address handed out
    <dataDir>/ipam/<network name>/lock                 flock(LOCK_EX) around every change

Allocation is host-local's: the range is subnet+1 .. broadcast-1, the gateway (subnet+1) is never
handed out, and the search goes round-robin from the address after the last one reserved. A
reservation is an O_EXCL file create under the directory lock, so concurrent ADDs (several
processes) never share an address.

`ContainerStore` is silk's store.json (spec silk 4.1): handle -> {handle, ip, metadata}, which the
silk-daemon reads to know whether containers still run on the cell.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cfnet.core import files

LINE_BREAK = "\r\n"
LAST_RESERVED = "last_reserved_ip.0"
LOCK = "lock"


class IPAMError(Exception):
    """Allocation or release failed; the message is host-local's wording."""


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """The cell's subnet as host-local validates a range (the errors are its texts)."""
    try:
        iface = ipaddress.ip_interface(subnet)
    except ValueError:
        raise IPAMError(f"invalid CIDR address: {subnet}") from None
    if not isinstance(iface, ipaddress.IPv4Interface) or "/" not in subnet:
        raise IPAMError(f"invalid CIDR address: {subnet}")
    net = iface.network
    if iface.ip != net.network_address:
        raise IPAMError(f"Network has host bits set. For a subnet mask of length "
                        f"{net.prefixlen} the network address is {net.network_address}")
    if net.prefixlen > 30:
        raise IPAMError(f"Network {net} too small to allocate from")
    return net


class HostLocal:
    """The IPAM directory of one network (`name`) under `data_dir` (the plugin's `dataDir`)."""

    def __init__(self, data_dir: str, name: str) -> None:
        self.dir = os.path.join(data_dir, "ipam", name)

    @contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK), os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- reading ------------------------------------------------------------------------------

    def _entries(self) -> Iterator[tuple[str, tuple[str, str]]]:
        """(ip, (containerID, ifname)) of every reservation."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name == LOCK or name.startswith("last_reserved_ip") or name.startswith("."):
                continue
            owner = _read_owner(os.path.join(self.dir, name))
            if owner is not None:
                yield name, owner

    def allocations(self) -> dict[str, tuple[str, str]]:
        """ip -> (containerID, ifname) of every reservation (ifname "" in the legacy format)."""
        return dict(self._entries())

    def find(self, container_id: str, ifname: str) -> list[str]:
        """The addresses reserved for this attachment (legacy files match on the id alone)."""
        return [ip for ip, owner in self.allocations().items() if _owned(owner, container_id, ifname)]

    # -- changing -----------------------------------------------------------------------------

    def allocate(self, subnet: str, container_id: str, ifname: str) -> ipaddress.IPv4Address:
        """Reserve the next free address of `subnet` for the attachment."""
        net = parse_subnet(subnet)
        first = int(net.network_address) + 1
        last = int(net.broadcast_address) - 1
        gateway = first
        with self.locked():
            for ip, owner in self.allocations().items():
                if _owned(owner, container_id, ifname):
                    raise IPAMError(f"{ip} has been allocated to {container_id}, "
                                    f"duplicate allocation is not allowed")
            start = first
            prev = self._last_reserved()
            if prev is not None and first <= prev <= last:
                start = prev + 1 if prev < last else first
            size = last - first + 1
            for step in range(size):
                candidate = first + (start - first + step) % size
                if candidate == gateway:
                    continue
                ip = ipaddress.IPv4Address(candidate)
                if self._reserve(str(ip), container_id, ifname):
                    self._write(LAST_RESERVED, str(ip))
                    return ip
        raise IPAMError(f"failed to allocate for range 0: no IP addresses available in range set: "
                        f"{ipaddress.IPv4Address(first)}-{ipaddress.IPv4Address(last)}")

    def release(self, ip: str, container_id: str, ifname: str) -> bool:
        """Free `ip` if it is still reserved for this attachment (the rollback of `allocate`)."""
        with self.locked():
            return self._release_if_owned(ip, container_id, ifname)

    def release_attachment(self, container_id: str, ifname: str) -> list[str]:
        """Free every address of the attachment (DEL); returns them. Missing is fine."""
        with self.locked():
            return [ip for ip in self.find(container_id, ifname)
                    if self._release_if_owned(ip, container_id, ifname)]

    def release_all_but(self, valid: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """Free every reservation whose (containerID, ifname) is not in `valid` (GC)."""
        keep = set(valid)
        freed = {}
        with self.locked():
            for ip, owner in self.allocations().items():
                if owner in keep or (not owner[1] and any(owner[0] == k[0] for k in keep)):
                    continue
                try:
                    os.unlink(os.path.join(self.dir, ip))
                    freed[ip] = owner
                except FileNotFoundError:
                    pass
        return freed

    def free_count(self, subnet: str) -> int:
        net = parse_subnet(subnet)
        usable = net.num_addresses - 3  # network, gateway, broadcast
        taken = sum(1 for ip in self.allocations() if _in(ip, net))
        return max(usable - taken, 0)

    # -- helpers ------------------------------------------------------------------------------

    def _reserve(self, ip: str, container_id: str, ifname: str) -> bool:
        try:
            fd = os.open(os.path.join(self.dir, ip), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{container_id}{LINE_BREAK}{ifname}".encode())
        except OSError:
            os.close(fd)
            os.unlink(os.path.join(self.dir, ip))
            raise
        os.close(fd)
        return True

    def _release_if_owned(self, ip: str, container_id: str, ifname: str) -> bool:
        path = os.path.join(self.dir, ip)
        owner = _read_owner(path)
        if owner is None or not _owned(owner, container_id, ifname):
            return False
        os.unlink(path)
        return True

    def _last_reserved(self) -> int | None:
        try:
            with open(os.path.join(self.dir, LAST_RESERVED)) as f:
                return int(ipaddress.IPv4Address(f.read().strip()))
        except (OSError, ValueError):
            return None

    def _write(self, name: str, text: str) -> None:
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _read_owner(path: str) -> tuple[str, str] | None:
    """(containerID, ifname) from a reservation file. Read as bytes: text mode would turn the
    `\\r\\n` separator into `\\n`."""
    try:
        with open(path, "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None
    cid, _, ifname = raw.strip().partition(LINE_BREAK)
    return cid.strip(), ifname.strip()


def _owned(owner: tuple[str, str], container_id: str, ifname: str) -> bool:
    cid, ifn = owner
    return cid == container_id and (ifn == ifname or not ifn)


def _in(ip: str, net: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.IPv4Address(ip) in net
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------


class StoreError(Exception):
    """The container store could not be read or written (upstream wording)."""


class ContainerStore:
    """silk's store.json: handle -> {"handle", "ip", "metadata"}, locked by flock on the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextmanager
    def _open(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            if not self.path:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory")
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"open lock: open {self.path}: "
                             f"{(e.strerror or str(e)).lower()}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = files.read_all(fd)
            try:
                data = json.loads(raw) if raw.strip() else {}
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                raise StoreError(f"decoding file: {e}") from None
            yield fd, data
        finally:
            os.close(fd)

    @staticmethod
    def _write(fd: int, data: dict[str, Any]) -> None:
        try:
            files.overwrite(fd, (json.dumps(data, separators=(",", ":")) + "\n").encode())
        except OSError as e:
            raise StoreError(f"encode and overwrite: {e.strerror or e}") from None

    def read(self) -> dict[str, Any]:
        with self._open() as (_, data):
            return data

    def add(self, handle: str, ip: str, metadata: dict[str, Any] | None = None) -> None:
        if not handle:
            raise StoreError("invalid handle")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise StoreError(f"invalid ip: {ip}") from None
        with self._open() as (fd, data):
            data[handle] = {"handle": handle, "ip": ip, "metadata": metadata}
            self._write(fd, data)

    def delete(self, handle: str = "", ips: Iterable[str] = ()) -> list[str]:
        """Remove `handle` and every entry holding one of `ips`; returns the removed handles."""
        drop = set(ips)
        with self._open() as (fd, data):
            gone = [h for h, v in data.items()
                    if h == handle or (isinstance(v, dict) and v.get("ip") in drop)]
            if gone:
                for h in gone:
                    del data[h]
                self._write(fd, data)
            return gone
