"""The transaction layer against the kernel, inside namespaces: workers, errors, atomicity,
and the add -> list -> delete round trip of every element shape the cell table uses."""

from __future__ import annotations

import os
import threading

import pytest

from cfnet.core import nft_syntax as nx
from cfnet.net import cell_table as ct
from cfnet.net.nft import Nft, NftError, _workers
from cfnet.testing.netns import Sandbox

pytestmark = pytest.mark.privileged


def _own_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def test_runs_inside_the_namespace_and_leaves_the_caller_alone(sandbox: Sandbox) -> None:
    before = _own_netns()
    a, b = Nft(sandbox.netns("a")), Nft(sandbox.netns("b"))
    try:
        a.run("add table ip probe")
        assert a.table_exists("ip", "probe")
        assert not b.table_exists("ip", "probe")
        assert _own_netns() == before
    finally:
        a.close()
        b.close()


def test_one_worker_per_namespace_is_shared_and_stopped_by_the_last_user(sandbox: Sandbox) -> None:
    name = sandbox.netns("w")
    first, second = Nft(name), Nft(name)
    assert first._worker is second._worker
    idents = [first._call(lambda ctx: threading.get_ident()),
              second._call(lambda ctx: threading.get_ident())]
    assert idents[0] == idents[1] != threading.get_ident()
    thread = first._worker._thread  # type: ignore[union-attr]
    first.close()
    assert thread.is_alive()
    second.close()
    assert not thread.is_alive()
    assert all(w.refs > 0 for w in _workers.values())


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NftError, match="network namespace cfnet-no-such-ns does not exist"):
        Nft("cfnet-no-such-ns")


def test_errors_carry_nft_message_and_the_failing_line(nft: Nft) -> None:
    with pytest.raises(NftError) as e:
        nft.run("add table ip t\nadd chain ip t c\nadd rule ip t c ip daddr 10.0.0.300 accept\n")
    assert e.value.line == "add rule ip t c ip daddr 10.0.0.300 accept"
    assert "10.0.0.300" in e.value.message or "resolve" in e.value.message
    with pytest.raises(NftError) as e:
        nft.run("add table ip t\ndelete chain ip t nosuchchain\n")
    assert "No such file or directory" in e.value.message
    assert e.value.line == "delete chain ip t nosuchchain"


def test_a_transaction_with_one_bad_command_changes_nothing(nft: Nft) -> None:
    nft.run(ct.render_base())
    nft.run("add element ip cfnet containers { 10.255.0.2 }")
    before = ct.list_cell(nft)
    bad = ("flush set ip cfnet containers\n"
           "add element ip cfnet containers { 10.255.0.3 }\n"
           "add chain ip cfnet brand-new\n"
           "delete element ip cfnet netout_v { 10.9.9.9 }\n")  # missing element: kernel error
    with pytest.raises(NftError):
        nft.run(bad)
    after = ct.list_cell(nft)
    assert after == before
    assert after is not None and after.sets["containers"].elements == ["10.255.0.2"]


def test_json_commands_are_one_transaction_too(nft: Nft) -> None:
    nft.run_json([{"add": {"table": {"family": "ip", "name": "j"}}},
                  {"add": {"set": {"family": "ip", "table": "j", "name": "s",
                                   "type": "ipv4_addr"}}},
                  {"add": {"element": {"family": "ip", "table": "j", "name": "s",
                                       "elem": ["10.0.0.1"]}}}])
    with pytest.raises(NftError):
        nft.run_json([{"add": {"element": {"family": "ip", "table": "j", "name": "s",
                                           "elem": ["10.0.0.2"]}}},
                      {"delete": {"element": {"family": "ip", "table": "j", "name": "s",
                                              "elem": ["10.0.0.9"]}}}])
    state = nft.list_table("ip", "j")
    assert state is not None and state.sets["s"].elements == ["10.0.0.1"]


def test_base_ruleset_loads_and_reapplying_it_keeps_elements_and_owned_chains(nft: Nft) -> None:
    cfg = ct.CellConfig(vtep_name="silk-vtep", no_masquerade_cidr="10.255.0.0/16")
    nft.run(ct.render_base(cfg))
    nft.run("add element ip cfnet containers { 10.255.0.2 }\n"
            "add element ip cfnet c2c_src_tag { 10.255.0.2 : 0x5 }\n"
            "add rule ip cfnet c2c meta mark set ip saddr map @c2c_src_tag\n")
    first = nft.list_table("ip", "cfnet")
    nft.run(ct.render_base(cfg))
    nft.run(ct.render_base(cfg))
    again = nft.list_table("ip", "cfnet")
    assert again is not None and first is not None
    assert again.sets["containers"].elements == ["10.255.0.2"]
    assert again.sets["c2c_src_tag"].elements == ["10.255.0.2 : 0x5"]
    assert len(again.chains["c2c"].rules) == 1  # agent-owned chain untouched
    for chain in ct.BASE_CHAINS:  # base chains rewritten, not appended to
        assert len(again.chains[chain].rules) == len(first.chains[chain].rules) > 0
        assert again.chains[chain].hook is not None
    nft.run(ct.render_reset(cfg))
    reset = ct.list_cell(nft)
    assert reset is not None and reset.sets["containers"].elements == []


SHAPES = [  # (set declaration, canonical elements): every shape the cell table writes
    ("type ifname;", ['"eth0"', '"silk-vtep"']),
    ("type ipv4_addr;", ["10.255.0.2"]),
    ("type ipv4_addr; flags interval;", ["1.2.3.4", "10.0.0.0/8", "5.5.5.5-6.6.6.6",
                                          "192.0.0.0/2"]),
    ("type ipv4_addr : mark;", ["10.255.0.2 : 0x1", "10.255.0.3 : 0xffff",
                                "10.255.0.4 : 0xffff0000"]),
    (ct.ALLOW_TYPE, ["10.255.0.2 . 0x1 . tcp . 80-80", "10.255.0.2 . 0xffff . udp . 1000-2000",
                     "10.255.0.3 . 0xffff . tcp . 8080-8080", "10.255.0.3 . 0xffff0000 . tcp . 1-65535",
                     "10.255.0.2 . 0x1 . tcp . 81-90"]),
    ("type ipv4_addr : verdict;", ["10.255.0.2 : jump netout-abc", "10.255.0.3 : jump overlay-abc"]),
    ("type ipv4_addr . inet_proto . inet_service;", ["169.254.0.2 . udp . 53",
                                                     "169.254.0.2 . tcp . 53"]),
    ("type ipv4_addr . inet_service : ipv4_addr . inet_service;",
     ['10.10.0.1 . 61000 comment "h-1" : 10.255.0.2 . 8080', "10.10.0.1 . 61001 : 10.255.0.3 . 1"]),
    ("type ipv4_addr . inet_service;", ['10.10.0.1 . 61000 comment "h-1"', "10.10.0.1 . 65535"]),
]


@pytest.mark.parametrize("decl,items", SHAPES, ids=[s[0] for s in SHAPES])
def test_every_element_shape_round_trips(nft: Nft, decl: str, items: list[str]) -> None:
    kind = "map" if ":" in decl else "set"
    nft.run("add table ip shapes\nadd chain ip shapes netout-abc\nadd chain ip shapes overlay-abc\n"
            f"add {kind} ip shapes s {{ {decl} }}\n")

    def listed() -> list[str]:
        state = nft.list_table("ip", "shapes")
        assert state is not None
        return sorted(state.sets["s"].elements)

    nft.run(f"add element ip shapes s {nx.elements(items)}")
    assert listed() == sorted(items)
    for i, item in enumerate(items):  # each element deleted on its own, by its canonical key
        key = item.split(" comment ")[0].split(" : ")[0]
        nft.run(f"delete element ip shapes s {{ {key} }}")
        assert listed() == sorted(items[i + 1:])


def test_many_concatenated_elements_keep_their_marks(nft: Nft) -> None:
    # nft 1.0.6 byte-swaps the mark of every ~1,260th element of one long `add element`
    # command; chunked commands avoid it. This would list 0x...0000 marks if it regressed.
    items = [nx.C2CAllow(f"10.255.{i // 250}.{i % 250 + 1}", 0x1 + i % 0xFFFF, "udp", 8080,
                         8080).element() for i in range(3000)]
    nft.run(f"add table ip shapes\nadd set ip shapes s {{ {ct.ALLOW_TYPE} }}\n")
    nft.run("\n".join(c.replace(f"{ct.T} c2c_allow", "ip shapes s")
                      for c in ct.element_commands("add", "c2c_allow", items)))
    state = nft.list_table("ip", "shapes")
    assert state is not None and sorted(state.sets["s"].elements) == sorted(items)


def test_overlapping_ranges_are_refused_by_the_kernel_and_merged_by_us(nft: Nft) -> None:
    nft.run(f"add table ip shapes\nadd set ip shapes s {{ {ct.ALLOW_TYPE} }}\n")
    raw = [nx.C2CAllow("10.255.0.2", 5, "tcp", 8080, 8090),
           nx.C2CAllow("10.255.0.2", 5, "tcp", 8085, 9000)]
    with pytest.raises(NftError):
        nft.run(f"add element ip shapes s {nx.elements([e.element() for e in raw])}")
    merged = [e.element() for e in nx.merge_c2c(raw)]
    nft.run(f"add element ip shapes s {nx.elements(merged)}")
    state = nft.list_table("ip", "shapes")
    assert state is not None and state.sets["s"].elements == ["10.255.0.2 . 0x5 . tcp . 8080-9000"]


def test_a_process_inside_the_namespace_uses_the_plain_path(sandbox: Sandbox) -> None:
    import sys

    from cfnet.net import netns

    name = sandbox.netns("plain")
    code = ("from cfnet.net.nft import Nft\n"
            "n = Nft()\n"
            "n.run('add table ip plain')\n"
            "print(n.table_exists('ip', 'plain'))\n")
    out = netns.run(name, [sys.executable, "-c", code], timeout=60).stdout
    assert out.strip() == "True"
    with Nft(name) as inside:
        assert inside.table_exists("ip", "plain")
