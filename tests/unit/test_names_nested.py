"""Nested TargetModels (``team-a/cities/Chicago_IL.tar.gz``): one valid, collision-free, reversible Triton name each,
and policies that match the readable path exactly (toolkit/names.py says why not the Triton name)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.gateway.auth import AuthConfig, like
from toolkit.gateway.endpoints import EndpointRouter
from toolkit.names import ModelNameError, canonical_target, check_model_name, is_nested, strip_target, target_path
from toolkit.spec.models import EndpointSpec

# A path segment as the rule allows it: a valid name without "..", not ending with "." (the last one may).
segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,12}", fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith(".")
)
paths = (
    st.lists(segment, min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda p: not p.endswith((".tar.gz", ".tgz")) and len(p) + p.count("/") <= 128)
)


@pytest.mark.parametrize(
    ("target", "name", "path"),
    [
        ("team-a/cities/Chicago_IL.tar.gz", "team-a..cities..Chicago_IL", "team-a/cities/Chicago_IL"),
        ("/team-a/cities/Chicago_IL.tgz", "team-a..cities..Chicago_IL", "team-a/cities/Chicago_IL"),
        ("team-a..cities..Chicago_IL", "team-a..cities..Chicago_IL", "team-a/cities/Chicago_IL"),
        ("team-a/cities..Chicago_IL", "team-a..cities..Chicago_IL", "team-a/cities/Chicago_IL"),
        ("NY_0.tar.gz", "NY_0", "NY_0"),
        ("v1.2/model.v3", "v1.2..model.v3", "v1.2/model.v3"),
        ("a/b.", "a..b.", "a/b."),  # the last segment may end with "."
        ("x.tgz/m", "x.tgz..m", "x.tgz/m"),  # a suffix only counts at the end
    ],
)
def test_nested_names(target: str, name: str, path: str) -> None:
    assert canonical_target(target) == name
    assert target_path(name) == path == strip_target(target)
    assert canonical_target(name) == name and check_model_name(name) == name
    assert is_nested(name) == ("/" in path)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("team-a/../x", "'..' path segments"),
        ("team-a/./x", "'..' path segments"),
        ("a//b", "empty path segment"),
        ("a/b/", "empty path segment"),
        ("a..", "empty path segment"),
        ("a...b", "must not start or end with '.'"),
        ("a./b", "must not start or end with '.'"),
        ("a/.hidden", "must not start or end with '.'"),
        ("a\\b", "backslashes"),
        ("C:/models/x", "may only contain"),
        ("s3://bucket/x.tar.gz", "may only contain"),
        ("team a/x", "may only contain"),
        ("a/b.tar.gz.tgz", "suffix twice"),
        ("/".join(["abcdefgh"] * 15), "characters as a Triton model name"),
    ],
)
def test_refused_paths_say_why(bad: str, why: str) -> None:
    with pytest.raises(ModelNameError, match=why) as err:
        canonical_target(bad)
    assert "TargetModel" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["a..", "a...b", "..a", "a..b..", "a./b".replace("/", "..")])
def test_target_path_refuses_non_canonical_names(bad: str) -> None:
    with pytest.raises(ModelNameError):
        target_path(bad)


@settings(max_examples=500, deadline=None)
@given(paths, st.integers(0, 2), st.sampled_from(["", ".tar.gz", ".tgz"]))
def test_every_path_round_trips(path: str, slashes: int, suffix: str) -> None:
    name = canonical_target("/" * slashes + path + suffix)
    assert target_path(name) == path  # reversible, hence collision-free
    assert canonical_target(name) == name == check_model_name(name)  # idempotent and a valid Triton name
    assert "/" not in name and not name.startswith(".")


@settings(max_examples=300, deadline=None)
@given(paths, paths)
def test_distinct_paths_distinct_names(a: str, b: str) -> None:
    assert (canonical_target(a) == canonical_target(b)) == (a == b)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab./_-\\", max_size=16))
def test_any_accepted_target_is_a_fixed_point_with_a_path(target: str) -> None:
    try:
        name = canonical_target(target)
    except ModelNameError:
        return
    assert canonical_target(name) == name == canonical_target(target_path(name))
    assert strip_target(name) == target_path(name)


def _policy(effect_patterns: list[tuple[str, str, list[str]]]) -> AuthConfig:
    statements = [{"Effect": "Allow", "Action": "invoke"}] if not effect_patterns else []
    for effect, op, patterns in effect_patterns:
        cond = {op: {"sagemaker:TargetModel": patterns}}
        statements.append({"Effect": effect, "Action": "invoke", "Condition": cond})
    return AuthConfig.from_dict({"principals": [{"name": "p", "api_keys": ["k"], "policy": statements}]})


def _allowed(cfg: AuthConfig, target: str) -> bool:
    """The context as the gateway's router builds it for a SageMaker invocation (toolkit/gateway/endpoints.py)."""
    router = EndpointRouter([EndpointSpec(name="e", mode="multi-model", store="s3://b/p")], knows=lambda n: True)
    route = router.resolve("e", target_model=target)
    return cfg.allowed(cfg.principal("p"), "sagemaker:InvokeEndpoint", cfg.endpoint_arn("e"), route.context)


ALLOW_TEAM_A = [("Allow", "StringLike", ["team-a/*"])]
DENY_CITIES = [("Allow", "StringLike", ["*"]), ("Deny", "StringLike", ["/team-a/cities/*.tar.gz"])]
ALLOW_DOTTED = [("Allow", "StringLike", ["a.*"])]
ALLOW_ONE_CHAR = [("Allow", "StringLike", ["a?b"])]
ALLOW_EXACT = [("Allow", "StringEquals", ["team-a..cities..Chicago_IL"])]  # written in the Triton spelling


@pytest.mark.parametrize(
    ("policy", "target", "allowed"),
    [
        (ALLOW_TEAM_A, "team-a/cities/Chicago_IL.tar.gz", True),
        (ALLOW_TEAM_A, "/team-a/x.tgz", True),
        (ALLOW_TEAM_A, "team-a..x", True),  # the Triton spelling of the same model
        (ALLOW_TEAM_A, "team-b/x.tar.gz", False),
        (ALLOW_TEAM_A, "team-a", False),
        (ALLOW_TEAM_A, "team-ab/x", False),
        (DENY_CITIES, "team-a/cities/Chicago_IL.tar.gz", False),
        (DENY_CITIES, "team-a..cities..Houston_TX", False),
        (DENY_CITIES, "team-a/towns/x.tar.gz", True),
        (DENY_CITIES, "housing_Chicago_IL.tar.gz", True),
        # Exact IAM semantics over the path: a literal "." never matches half of the Triton name's ".." ...
        (ALLOW_DOTTED, "a.v2.tar.gz", True),
        (ALLOW_DOTTED, "a/x.tar.gz", False),
        # ... and "?" matches the one character "/", as it would on SageMaker.
        (ALLOW_ONE_CHAR, "a/b.tar.gz", True),
        (ALLOW_ONE_CHAR, "axb", True),
        (ALLOW_EXACT, "team-a/cities/Chicago_IL.tar.gz", True),
        (ALLOW_EXACT, "team-a/cities/Houston_TX.tar.gz", False),
    ],
)
def test_policy_matcher_table(policy: list[tuple[str, str, list[str]]], target: str, allowed: bool) -> None:
    assert _allowed(_policy(policy), target) is allowed


def test_why_policies_do_not_match_the_triton_name() -> None:
    """The two ways a glob over Triton names would differ from the same glob over paths (toolkit/names.py)."""
    assert like("a.*", "a..x") and not like("a.*", "a/x")  # an Allow would grant more than it says
    assert like("a?b", "a/b") and not like("a?b", "a..b")  # a Deny would deny less


def test_router_routes_the_triton_name_and_shows_policies_the_path() -> None:
    router = EndpointRouter([EndpointSpec(name="e", mode="multi-model", store="s3://b/p")], knows=lambda n: True)
    route = router.resolve("e", target_model="/team-a/cities/Chicago_IL.tar.gz")
    assert route.chain == ("team-a..cities..Chicago_IL",)
    assert route.context["sagemaker:TargetModel"] == "team-a/cities/Chicago_IL"
    flat = router.resolve("e", target_model="NY_0.tar.gz")
    assert flat.chain == ("NY_0",) and flat.context["sagemaker:TargetModel"] == "NY_0"


def test_kserve_and_grpc_requests_for_a_nested_model_carry_its_path_to_the_policy() -> None:
    """What admission puts in the policy context for a Triton name (KServe URL, gRPC model_name, a model reached
    through a router): the same TargetModel path a SageMaker request carries, so `team-a/*` covers every route."""
    from toolkit.gateway.admission import target_context
    from toolkit.gateway.auth import INVOKE, AuthConfig

    cfg = AuthConfig.from_dict(
        {
            "principals": [
                {
                    "name": "p",
                    "api_keys": ["k"],
                    "policy": [
                        {"Effect": "Allow", "Action": "invoke"},
                        {
                            "Effect": "Deny",
                            "Action": "invoke",
                            "Condition": {"StringLike": {"sagemaker:TargetModel": "team-a/*"}},
                        },
                    ],
                }
            ]
        }
    )
    p, arn = cfg.principal("p"), cfg.endpoint_arn("kserve")
    assert target_context("team-a..cities..Chicago_IL") == {"sagemaker:TargetModel": "team-a/cities/Chicago_IL"}
    assert not cfg.allowed(p, INVOKE, arn, target_context("team-a..cities..Chicago_IL"))
    assert cfg.allowed(p, INVOKE, arn, target_context("team-b..Chicago_IL"))
    assert cfg.allowed(p, INVOKE, arn, target_context("team-a_flat"))
    assert target_context("") == {"sagemaker:TargetModel": ""}  # every model's statistics: no name
