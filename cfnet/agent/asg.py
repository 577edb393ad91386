"""Dynamic ASG selection per container (spec dataplane 2.2), pure.

For each container with a `policy_group_id` and a `space_id`: staging containers get the
staging-default groups' rules followed by those of groups bound to their space for staging;
`app` and `task` containers the same for running; any other workload gets no allow rules (Q5,
as upstream: only deny networks and the defaults). Order is the policy server's. A group whose
rules do not parse makes every container that selects it fail this cycle: its previous chain
stays (upstream skips the container, Q7), and the error names the group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cfnet.agent.planner import LocalContainer
from cfnet.clients.internal_api import SecurityGroup
from cfnet.core.asg_rules import AsgRuleError, EgressRule, parse_asg_rules


@dataclass
class Selection:
    rules: dict[str, list[EgressRule]] = field(default_factory=dict)  # handle -> rules
    errors: dict[str, str] = field(default_factory=dict)  # handle -> why it was skipped


def asg_containers(containers: Iterable[LocalContainer]) -> list[LocalContainer]:
    """Containers that take part in ASG syncing (they have a space id)."""
    return [c for c in containers if c.space_id]


def space_ids(containers: Iterable[LocalContainer]) -> list[str]:
    return sorted({c.space_id for c in containers if c.space_id})


def select(containers: Sequence[LocalContainer], groups: Sequence[SecurityGroup]) -> Selection:
    parsed: dict[str, list[EgressRule] | str] = {}
    for g in groups:
        try:
            parsed[g.guid] = parse_asg_rules(g.rules or "[]")
        except AsgRuleError as e:
            parsed[g.guid] = f"security group {g.guid} ({g.name}): {e}"

    def pick(lifecycle: str, space: str) -> list[EgressRule] | str:
        out: list[EgressRule] = []
        chosen = [g for g in groups if (g.staging_default if lifecycle == "staging"
                                        else g.running_default)]
        chosen += [g for g in groups
                   if not (g.staging_default if lifecycle == "staging" else g.running_default)
                   and space in (g.staging_space_guids if lifecycle == "staging"
                                 else g.running_space_guids)]
        for g in chosen:
            rules = parsed[g.guid]
            if isinstance(rules, str):
                return rules
            out.extend(rules)
        return out

    sel = Selection()
    for c in asg_containers(containers):
        if c.workload == "staging":
            result = pick("staging", c.space_id)
        elif c.workload in ("app", "task"):
            result = pick("running", c.space_id)
        else:
            result = []
        if isinstance(result, str):
            sel.errors[c.handle] = result
        else:
            sel.rules[c.handle] = result
    return sel
