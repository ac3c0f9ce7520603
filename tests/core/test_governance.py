"""Which profile governs a namespace, and why the others do not."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import (
    Namespace,
    Standing,
    candidate_standing,
    governing_profile,
    is_excluded,
    precedence,
    protected_namespaces,
    standing,
)
from default_policy_operator.core.labels import DEFAULT_PROTECTED_NAMESPACES, EXEMPT_LABEL
from default_policy_operator.core.model import Profile, parse_profile

PROTECTED = protected_namespaces("dpo-system")


def prof(name: str, priority: int = 0, **spec: Any) -> Profile:
    return parse_profile({"metadata": {"name": name}, "spec": {"priority": priority, **spec}})


def govern(profiles: list[Profile], namespace: Namespace) -> Profile | None:
    return governing_profile(sorted(profiles, key=precedence), namespace, PROTECTED)


def governor_name(profiles: list[Profile], namespace: Namespace) -> str | None:
    governor = govern(profiles, namespace)
    return None if governor is None else governor.name


# -- protected and exempt ---------------------------------------------------------------------


def test_protected_namespaces() -> None:
    assert protected_namespaces(None) == DEFAULT_PROTECTED_NAMESPACES
    assert protected_namespaces("") == DEFAULT_PROTECTED_NAMESPACES
    assert DEFAULT_PROTECTED_NAMESPACES | {"dpo-system"} == PROTECTED
    for name in ("kube-system", "kube-public", "kube-node-lease", "calico-system"):
        assert name in PROTECTED


@pytest.mark.parametrize("name", sorted(DEFAULT_PROTECTED_NAMESPACES | {"dpo-system"}))
def test_protected_namespace_is_never_governed(name: str) -> None:
    p = prof("all")
    ns = Namespace(name)
    assert govern([p], ns) is None
    assert candidate_standing(p, ns, PROTECTED) is Standing.PROTECTED
    assert standing(p, ns, None, PROTECTED) is Standing.PROTECTED


@pytest.mark.parametrize(
    ("value", "exempt"), [("true", True), ("True", False), ("yes", False), ("", False)]
)
def test_exempt_label_only_counts_when_true(value: str, exempt: bool) -> None:
    ns = Namespace("team-a", labels={EXEMPT_LABEL: value})
    assert ns.exempt is exempt
    p = prof("all")
    assert (govern([p], ns) is None) is exempt
    expected = Standing.EXEMPT if exempt else Standing.GOVERNED
    assert standing(p, ns, govern([p], ns), PROTECTED) is expected


def test_exempt_wins_only_when_selected() -> None:
    p = prof("prod", namespaceSelector={"matchLabels": {"env": "prod"}})
    ns = Namespace("a", labels={EXEMPT_LABEL: "true"})
    assert standing(p, ns, None, PROTECTED) is Standing.UNSELECTED


# -- exclusions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "patterns", "excluded"),
    [
        ("legacy", ("legacy",), True),
        ("legacy-2", ("legacy",), False),
        ("xlegacy", ("legacy",), False),
        ("sandbox-1", ("sandbox-*",), True),
        ("sandbox-", ("sandbox-*",), True),
        ("sandbox", ("sandbox-*",), False),
        ("my-sandbox-1", ("sandbox-*",), False),
        ("team-a", ("team-?",), True),
        ("team-ab", ("team-?",), False),
        ("team-b", ("team-[ab]",), True),
        ("team-c", ("team-[ab]",), False),
        ("team-c", ("team-[!ab]",), True),
        ("Legacy", ("legacy",), False),
        ("LEGACY-1", ("legacy-*",), False),  # case-sensitive, whatever the OS
        ("a", (), False),
        ("b", ("a", "b*", "c"), True),
        ("anything", ("*",), True),
        ("a.b", ("a?b",), True),
        ("a.b", ("a.b",), True),
        ("axb", ("a.b",), False),  # '.' is literal, not a regex dot
        ("ab", ("a+b",), False),  # '+' is literal
        ("a+b", ("a+b",), True),
    ],
)
def test_is_excluded(name: str, patterns: tuple[str, ...], excluded: bool) -> None:
    assert is_excluded(name, patterns) is excluded


def test_a_name_that_looks_like_a_glob_is_just_a_name() -> None:
    """A namespace literally named ``a*``: its name is matched, never interpreted."""
    assert not is_excluded("a*", ("a",))
    assert not is_excluded("a*", ("abc",))
    assert is_excluded("a*", ("a*",))  # the glob matches the literal text too
    assert is_excluded("a*", ("a[*]",))
    assert not is_excluded("ab", ("a[*]",))  # a bracketed '*' is a literal star
    assert not is_excluded("a?", ("a[?]x",))


def test_exclusion_gives_the_excluded_standing_and_next_profile_governs() -> None:
    high = prof("high", 10, excludeNamespaces=["legacy", "old-*"])
    low = prof("low", 0)
    for name in ("legacy", "old-app"):
        ns = Namespace(name)
        assert govern([high, low], ns) is low
        assert standing(high, ns, low, PROTECTED) is Standing.EXCLUDED
        assert standing(low, ns, low, PROTECTED) is Standing.GOVERNED
    assert govern([high, low], Namespace("new-app")) is high


def test_thousands_of_exclusions_are_fast() -> None:
    patterns = tuple(f"team-{i}" for i in range(3000)) + tuple(f"glob-{i}-*" for i in range(300))
    names = [f"team-{i}" for i in range(0, 6000, 3)] + [f"glob-{i}-x" for i in range(0, 600, 3)]
    start = time.perf_counter()
    results = [is_excluded(n, patterns) for n in names]
    elapsed = time.perf_counter() - start
    assert results == [int(n.split("-")[1]) < (3000 if n[0] == "t" else 300) for n in names]
    assert elapsed < 1.0


# -- precedence -------------------------------------------------------------------------------


def test_highest_priority_governs() -> None:
    ns = Namespace("a")
    assert governor_name([prof("z", 5), prof("a", 1), prof("m", -3)], ns) == "z"
    assert governor_name([prof("m", -3), prof("a", -4)], ns) == "m"


def test_ties_go_to_the_alphabetically_first_name() -> None:
    ns = Namespace("a")
    assert governor_name([prof("beta", 1), prof("alpha", 1), prof("zeta", 0)], ns) == "alpha"
    assert governor_name([prof("b"), prof("a-b"), prof("a")], ns) == "a"


def test_precedence_key() -> None:
    assert precedence(prof("x", 3)) == (-3, "x")
    ordered = sorted([prof("b", 1), prof("a", 1), prof("c", 2)], key=precedence)
    assert [p.name for p in ordered] == ["c", "a", "b"]


def test_governing_profile_takes_the_first_candidate_of_a_sorted_list() -> None:
    high = prof("high", 10, namespaceSelector={"matchLabels": {"env": "prod"}})
    low = prof("low", 0)
    prod, dev = Namespace("p", {"env": "prod"}), Namespace("d", {"env": "dev"})
    assert governing_profile([high, low], prod, PROTECTED) is high
    assert governing_profile([high, low], dev, PROTECTED) is low
    assert governing_profile([], prod, PROTECTED) is None


# -- standing ---------------------------------------------------------------------------------


def test_every_standing() -> None:
    high = prof("high", 10, namespaceSelector={"matchLabels": {"env": "prod"}})
    low = prof("low", 0, excludeNamespaces=["legacy"])
    profiles = [high, low]

    def standings(ns: Namespace) -> tuple[Standing, Standing]:
        governor = govern(profiles, ns)
        return standing(high, ns, governor, PROTECTED), standing(low, ns, governor, PROTECTED)

    assert standings(Namespace("web", {"env": "prod"})) == (Standing.GOVERNED, Standing.SHADOWED)
    assert standings(Namespace("dev")) == (Standing.UNSELECTED, Standing.GOVERNED)
    assert standings(Namespace("legacy")) == (Standing.UNSELECTED, Standing.EXCLUDED)
    assert standings(Namespace("legacy", {"env": "prod"})) == (
        Standing.GOVERNED,
        Standing.EXCLUDED,
    )
    assert standings(Namespace("x", {"env": "prod", EXEMPT_LABEL: "true"})) == (
        Standing.EXEMPT,
        Standing.EXEMPT,
    )
    assert standings(Namespace("kube-system", {"env": "prod"})) == (
        Standing.PROTECTED,
        Standing.PROTECTED,
    )
    assert {s.value for s in Standing} == {
        "governed",
        "shadowed",
        "excluded",
        "exempt",
        "protected",
        "unselected",
    }


def test_candidate_without_governor_is_shadowed() -> None:
    p = prof("p")
    assert standing(p, Namespace("a"), None, PROTECTED) is Standing.SHADOWED
    assert standing(p, Namespace("a"), prof("other"), PROTECTED) is Standing.SHADOWED


# -- property ---------------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d", "e", "f", "g"]
LABELS = {"env": ["prod", "dev"], "team": ["x", "y"]}


@st.composite
def profiles_and_namespace(draw: st.DrawFn) -> tuple[list[Profile], Namespace]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=6))
    profiles = []
    for name in names:
        spec: dict[str, Any] = {"priority": draw(st.integers(-2, 2))}
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(LABELS)))
            spec["namespaceSelector"] = {"matchLabels": {key: draw(st.sampled_from(LABELS[key]))}}
        spec["excludeNamespaces"] = draw(
            st.lists(st.sampled_from(["ns-1", "ns-*", "other", "kube-*"]), max_size=2)
        )
        profiles.append(prof(name, **spec))
    labels = {k: draw(st.sampled_from(v)) for k, v in LABELS.items() if draw(st.booleans())}
    if draw(st.integers(0, 5)) == 0:
        labels[EXEMPT_LABEL] = draw(st.sampled_from(["true", "false"]))
    ns = Namespace(draw(st.sampled_from(["ns-1", "ns-2", "app", "kube-system", "other"])), labels)
    return profiles, ns


@settings(max_examples=120, deadline=None)
@given(case=profiles_and_namespace(), seed=st.randoms(use_true_random=False))
def test_at_most_one_governor_and_it_is_the_best_candidate(
    case: tuple[list[Profile], Namespace], seed: Any
) -> None:
    profiles, ns = case
    shuffled = list(profiles)
    seed.shuffle(shuffled)
    governor = govern(shuffled, ns)

    # Independent reference: the candidates, by the documented rule.
    candidates = [
        p
        for p in profiles
        if p.namespace_selector.matches(ns.labels)
        and ns.name not in PROTECTED
        and ns.labels.get(EXEMPT_LABEL) != "true"
        and not any(
            e == ns.name or (e.endswith("*") and ns.name.startswith(e[:-1]))
            for e in p.exclude_namespaces
        )
    ]
    if not candidates:
        assert governor is None
    else:
        top = max(p.priority for p in candidates)
        expected = min(p.name for p in candidates if p.priority == top)
        assert governor is not None
        assert governor.name == expected

    governed = [p for p in profiles if standing(p, ns, governor, PROTECTED) is Standing.GOVERNED]
    assert len(governed) == (0 if governor is None else 1)
    shadowed = [p for p in profiles if standing(p, ns, governor, PROTECTED) is Standing.SHADOWED]
    assert len(governed) + len(shadowed) == len(candidates)


def test_protected_namespaces_include_every_profiles_dns_namespace() -> None:
    profiles = [
        prof("a", policies={"allowDNS": {"namespace": "coredns"}}),
        prof("b", policies={"allowDNS": {"enabled": False, "namespace": "dns-b"}}),
        prof("c"),
    ]
    assert protected_namespaces("dpo-system", profiles) == PROTECTED | {"coredns", "dns-b"}
    assert protected_namespaces(None, []) == DEFAULT_PROTECTED_NAMESPACES
