"""Space-developer access for non-admin callers: the policy guard (spec 3.3) and list filter (3.4).

Without Cloud Controller (standalone mode, no `cc_url`), there are no spaces to check: a
`network.write` caller may manage and see every policy, within the quota. See docs/policy-server.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from cfnet.core.policy import Policy
from cfnet.policy_server.cc import CloudController
from cfnet.policy_server.uaa import TokenData, UpstreamError


def _guids(policies: Iterable[Policy]) -> list[str]:
    seen: dict[str, None] = {}
    for p in policies:
        seen.setdefault(p.source, None)
        seen.setdefault(p.destination, None)
    return list(seen)


class SpaceAccess:
    def __init__(self, cc: CloudController | None, token_source: Callable[[], str] | None) -> None:
        self.cc = cc
        self.token_source = token_source

    def _token(self) -> str:
        return self.token_source() if self.token_source else ""

    def check(self, policies: list[Policy], user: TokenData) -> bool:
        """May `user` manage these policies? Raises UpstreamError when CC or UAA fails."""
        if self.cc is None:
            return True
        token = self._token()
        app_spaces = self.cc.app_spaces(_guids(policies), token)
        for space_guid in dict.fromkeys(app_spaces.values()):
            space = self.cc.space(space_guid, token)
            if space is None:
                return False
            name, org = space
            count = self.cc.developer_space_count(user.sub, name, org, token)
            if count == 0:
                return False
            if count > 1:
                raise UpstreamError("found more than one matching space")
        return True

    def filter(self, policies: list[Policy], user: TokenData) -> list[Policy]:
        """The policies whose source and destination apps are both in the user's spaces."""
        if self.cc is None or not policies:
            return list(policies)
        token = self._token()
        app_spaces = self.cc.app_spaces_chunked(_guids(policies), token)
        spaces = self.cc.user_spaces(user.sub, token)
        keep = []
        for p in policies:
            src, dst = app_spaces.get(p.source), app_spaces.get(p.destination)
            if src in spaces and dst in spaces:
                keep.append(p)
        return keep
