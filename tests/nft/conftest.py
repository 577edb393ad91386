"""Fixtures for the nftables tests: a fresh namespace with an `Nft` handle inside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cfnet.net.nft import Nft
from cfnet.testing.netns import Sandbox


@pytest.fixture
def nft(sandbox: Sandbox) -> Iterator[Nft]:
    """libnftables inside a new namespace of the sandbox; closed before the namespace goes."""
    handle = Nft(sandbox.netns("nft"))
    try:
        yield handle
    finally:
        handle.close()
