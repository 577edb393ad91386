"""The example configs under examples/ load with the real config loader (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfnet.policy_server.config import (load_external, load_internal, load_serve,
                                        load_static_tokens, load_syncer)

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_one_file_examples_have_the_same_content_in_json_and_toml() -> None:
    as_json = load_serve(EXAMPLES / "policy-server.json")
    assert as_json == load_serve(EXAMPLES / "policy-server.toml")
    assert as_json.external is not None and as_json.internal is not None
    # the internal block inherits the database and tag length
    assert as_json.internal.database == as_json.external.database
    assert as_json.internal.tag_length == as_json.external.tag_length == 2


@pytest.mark.parametrize("name, loader", [
    ("policy-server-uaa.json", lambda p: load_external(p)[0]),
    ("policy-server-internal.json", load_internal),
    ("policy-server-asg-syncer.json", load_syncer),
])
def test_upstream_shaped_examples_load(name: str, loader: object) -> None:
    cfg = loader(EXAMPLES / name)  # type: ignore[operator]
    assert cfg.database.type == "postgres"


def test_example_tokens_file_loads() -> None:
    tokens = load_static_tokens(EXAMPLES / "policy-server-tokens.json")
    assert {t.scopes for t in tokens.values()} == {("network.admin",), ("network.write",)}
