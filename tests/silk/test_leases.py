"""Lease pools, membership, MAC derivation and lease validation (cfnet/core/leases.py): pure."""

from __future__ import annotations

import random

import pytest

from cfnet.core.leases import (
    CIDRPool,
    Lease,
    LeaseError,
    hardware_addr,
    parse_networks,
    validate_lease,
)


def test_block_pool_skips_the_first_block() -> None:
    pool = CIDRPool("10.255.0.0/16", 24)
    blocks = list(pool.blocks())
    assert pool.block_pool_size == len(blocks) == 255
    assert blocks[0] == "10.255.1.0/24"
    assert blocks[-1] == "10.255.255.0/24"
    assert "10.255.0.0/24" not in blocks


@pytest.mark.parametrize(("network", "prefix", "size"), [
    ("10.255.0.0/16", 24, 255),
    ("10.255.0.0/16", 20, 15),  # docs-dev-guide#346: 15 cells, not 16
    ("10.252.0.0/14", 24, 1023),
    ("10.255.0.0/24", 30, 63),
])
def test_block_pool_sizes(network: str, prefix: int, size: int) -> None:
    assert CIDRPool(network, prefix).block_pool_size == size


def test_single_ip_pool_is_the_first_block_without_its_base() -> None:
    pool = CIDRPool("10.255.0.0/16", 24)
    singles = list(pool.singles())
    assert len(singles) == pool.single_pool_size == 255
    assert singles[0] == "10.255.0.1/32"
    assert singles[-1] == "10.255.0.255/32"  # includes the block's broadcast, as upstream
    assert list(CIDRPool("10.0.0.0/24", 29).singles()) == [f"10.0.0.{i}/32" for i in range(1, 8)]


def test_network_host_bits_are_masked() -> None:
    pool = CIDRPool("10.255.255.255/12", 24)
    assert [str(n) for n in pool.networks] == ["10.240.0.0/12"]
    assert pool.block(0) == "10.240.1.0/24"


def test_membership_is_exact_string_equality() -> None:
    pool = CIDRPool("10.255.0.0/16", 24)
    assert pool.is_member("10.255.30.0/24")
    assert pool.is_member("10.255.0.7/32")
    for not_member in ("10.255.30.10/24", "10.255.30.0/20", "10.255.0.0/24", "10.255.0.0/32",
                       "10.254.1.0/24", "10.255.030.0/24", "10.255.30.0", "garbage", "",
                       "10.255.1.0/32"):
        assert not pool.is_member(not_member), not_member
    assert pool.is_block_member("10.255.1.0/24") and not pool.is_single_member("10.255.1.0/24")
    assert pool.is_single_member("10.255.0.1/32") and not pool.is_block_member("10.255.0.1/32")


def test_several_cidrs_give_all_their_blocks_after_the_first() -> None:
    pool = CIDRPool(["10.255.0.0/22", "172.16.8.0/23", "192.168.5.0/24"], 24)
    assert list(pool.blocks()) == [
        "10.255.1.0/24", "10.255.2.0/24", "10.255.3.0/24",
        "172.16.8.0/24", "172.16.9.0/24",
        "192.168.5.0/24",
    ]
    assert pool.single(0) == "10.255.0.1/32"
    assert pool.is_member("172.16.9.0/24") and not pool.is_member("172.16.10.0/24")
    assert CIDRPool("10.255.0.0/22, 172.16.8.0/23", 24).block_pool_size == 5  # comma-separated


@pytest.mark.parametrize(("network", "prefix", "message"), [
    ("10.255.0.0/16", 16, "must be longer than the prefix of 10.255.0.0/16"),
    ("10.255.0.0/16", 8, "must be longer"),
    ("10.255.0.0/16", 31, "not between 1 and 30"),
    (["10.255.0.0/16", "10.1.0.0/25"], 24, "10.1.0.0/25 is smaller than one /24 block"),
    (["10.255.0.0/16", "10.255.128.0/20"], 24, "overlap"),
    ("10.255.0.0", 24, "is not an IPv4 CIDR"),
    ("fd00::/64", 24, "is not an IPv4 CIDR"),
    ("", 24, "must not be empty"),
    ([], 24, "must not be empty"),
])
def test_invalid_pools_are_refused(network: object, prefix: int, message: str) -> None:
    with pytest.raises(LeaseError, match=message):
        CIDRPool(network, prefix)  # type: ignore[arg-type]


def test_parse_networks_accepts_list_and_string() -> None:
    assert [str(n) for n in parse_networks(["10.0.0.0/24", "10.0.1.0/24"])] == ["10.0.0.0/24", "10.0.1.0/24"]
    assert [str(n) for n in parse_networks("10.0.0.0/24")] == ["10.0.0.0/24"]


def test_hardware_addr_is_ee_ee_and_the_base_ip() -> None:
    assert hardware_addr("10.255.30.0") == "ee:ee:0a:ff:1e:00"
    assert hardware_addr("10.255.0.34") == "ee:ee:0a:ff:00:22"


def test_free_block_never_returns_a_taken_one_and_covers_the_pool() -> None:
    pool = CIDRPool("10.255.0.0/24", 28)  # 15 blocks
    rng = random.Random(7)
    taken: list[str] = []
    for _ in range(pool.block_pool_size):
        block = pool.free_block(taken, rng)
        assert block is not None and block not in taken and pool.is_block_member(block)
        taken.append(block)
    assert sorted(taken) == sorted(pool.blocks())
    assert pool.free_block(taken, rng) is None


def test_free_block_ignores_foreign_and_single_rows() -> None:
    pool = CIDRPool("10.255.0.0/24", 26)  # 3 blocks
    taken = ["10.255.0.64/26", "10.255.0.128/26", "10.99.0.0/26", "10.255.0.1/32"]
    assert pool.free_block(taken) == "10.255.0.192/26"


def test_free_block_is_random_not_sequential() -> None:
    pool = CIDRPool("10.255.0.0/16", 24)
    picks = {pool.free_block([], random.Random(seed)) for seed in range(20)}
    assert len(picks) > 5


def test_free_block_in_a_huge_pool_is_cheap_and_in_range() -> None:
    pool = CIDRPool("10.0.0.0/8", 30)  # 4 million blocks, never listed
    block = pool.free_block(["10.0.0.4/30"])
    assert block is not None and pool.is_block_member(block)


def test_free_single() -> None:
    pool = CIDRPool("10.255.0.0/16", 30)  # 3 single IPs
    assert pool.free_single(["10.255.0.1/32", "10.255.0.2/32"]) == "10.255.0.3/32"
    assert pool.free_single(["10.255.0.1/32", "10.255.0.2/32", "10.255.0.3/32"]) is None


@pytest.mark.parametrize(("lease", "message"), [
    (Lease("foo", "10.255.1.0/24", "ee:ee:0a:ff:01:00"), "invalid underlay ip: foo"),
    (Lease("", "10.255.1.0/24", "ee:ee:0a:ff:01:00"), "invalid underlay ip: $"),
    (Lease("10.0.0.1", "10.255.1.0", "ee:ee:0a:ff:01:00"), "invalid CIDR address: 10.255.1.0"),
    (Lease("10.0.0.1", "10.255.1.0/24", "nope"), "address nope: invalid MAC address"),
])
def test_validate_lease_uses_upstream_messages(lease: Lease, message: str) -> None:
    with pytest.raises(LeaseError, match=message):
        validate_lease(lease)


def test_validate_lease_accepts_any_parsable_lease() -> None:
    validate_lease(Lease("10.0.0.1", "10.99.1.0/24", "EE-EE-0A-63-01-00"))
    validate_lease(Lease("10.0.0.1", "10.255.1.7/24", "ee:ee:0a:ff:01:00"))  # Go's ParseCIDR allows host bits


def test_lease_json_order_and_case_insensitive_decoding() -> None:
    lease = Lease("10.244.16.11", "10.255.17.0/24", "ee:ee:0a:ff:11:00")
    assert list(lease.to_json()) == ["underlay_ip", "overlay_subnet", "overlay_hardware_addr"]
    decoded = Lease.from_json({"Underlay_IP": "10.244.16.11", "OVERLAY_SUBNET": "10.255.17.0/24",
                               "overlay_hardware_addr": "ee:ee:0a:ff:11:00", "extra": 1})
    assert decoded == lease
    assert Lease.from_json({}) == Lease("", "", "")


def test_membership_in_pools_too_large_to_list() -> None:
    blocks = CIDRPool("10.0.0.0/8", 30)  # 4 million blocks: arithmetic, no lookup table
    assert blocks.is_member("10.0.0.4/30") and blocks.is_member("10.255.255.252/30")
    for not_member in ("10.0.0.04/30", "10.0.0.5/30", "10.0.0.0/30", "11.0.0.0/30", "10.0.0.4/29",
                       "+10.0.0.4/30", "10.0.0.4 /30", "10.0.0.256/30"):
        assert not blocks.is_member(not_member), not_member
    assert blocks.block_index("10.0.0.8/30") == 1
    singles = CIDRPool("10.0.0.0/8", 9)  # 8 million single IPs
    assert singles.is_single_member("10.0.0.1/32") and singles.is_single_member("10.127.255.255/32")
    assert not singles.is_single_member("10.0.0.0/32") and not singles.is_single_member("10.128.0.0/32")
