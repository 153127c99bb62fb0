"""Model names and TargetModel canonicalisation: one name per model, whatever the spelling, on both sides of a
policy check (the request's value and the policy's). Nested TargetModels (``team-a/x.tar.gz``): test_names_nested.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.gateway.auth import AuthConfig
from toolkit.names import ModelNameError, canonical_target, check_model_name, is_nested, strip_target, target_path

# Flat names: ".." is reserved for nested TargetModels (a flat "a..b" stands for the path "a/b"; see toolkit.names).
valid_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}", fullmatch=True).filter(
    lambda n: not n.endswith((".tar.gz", ".tgz")) and ".." not in n
)


@settings(max_examples=500, deadline=None)
@given(valid_names, st.integers(0, 3), st.sampled_from(["", ".tar.gz", ".tgz"]))
def test_every_spelling_of_a_name_is_that_name(name: str, slashes: int, suffix: str) -> None:
    assert canonical_target("/" * slashes + name + suffix) == name


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=40))
def test_a_canonical_name_is_a_fixed_point_and_a_valid_name(target: str) -> None:
    try:
        name = canonical_target(target)
    except ModelNameError:
        return
    assert check_model_name(name) == name == canonical_target(name)
    assert strip_target(name) == target_path(name)  # the policy spelling: the path (the name itself when flat)
    assert "/" not in name and "%" not in name and not name.startswith(".")


# "a/b" left this list on purpose: nested TargetModels are models now (their name is "a..b").
@pytest.mark.parametrize("bad", ["", "/", "a//b", "../x", ".tar.gz", "x.tar.gz.tgz", "x" * 129, "sp ace", "é", "%41"])
def test_no_model_behind_these(bad: str) -> None:
    with pytest.raises(ModelNameError, match="TargetModel"):
        canonical_target(bad)


POLICY = {
    "principals": [
        {
            "name": "p",
            "api_keys": ["k"],
            "policy": [
                {"Effect": "Allow", "Action": "invoke"},
                {
                    "Effect": "Deny",
                    "Action": "invoke",
                    "Condition": {"StringLike": {"sagemaker:TargetModel": "/h_*.tgz"}},
                },
                {
                    "Effect": "Deny",
                    "Action": "invoke",
                    "Condition": {"StringEquals": {"sagemaker:TargetModel": "x.tar.gz"}},
                },
            ],
        }
    ]
}


@pytest.mark.parametrize(
    ("model", "allowed"),
    [("h_a", False), ("h_", False), ("x", False), ("xx", True), ("ah_a", True), ("x.tar", True), ("y", True)],
)
def test_policy_values_are_canonical_too(model: str, allowed: bool) -> None:
    cfg = AuthConfig.from_dict(POLICY)
    p = cfg.principal("p")
    assert (
        cfg.allowed(p, "sagemaker:InvokeEndpoint", cfg.endpoint_arn("e"), {"sagemaker:TargetModel": model}) is allowed
    )


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "non-empty string"),
        (None, "non-empty string"),
        (b"abc", "non-empty string"),
        ("x" * 129, "is 129 characters long"),
        ("." + "x" * 127, "must not start with '.'"),
        (".hidden", "must not start with '.'"),
        ("..", "must not start with '.'"),
        ("a b", "may only contain"),
        ("-a", "may only contain"),
    ],
)
def test_each_refusal_says_why(bad: object, why: str) -> None:
    with pytest.raises(ModelNameError, match=why):
        check_model_name(bad)  # type: ignore[arg-type]


def test_the_longest_name() -> None:
    assert check_model_name("x" * 128) == "x" * 128
    assert check_model_name("_" + "." * 127) == "_" + "." * 127
    assert canonical_target("/" + "x" * 128 + ".tgz") == "x" * 128


@pytest.mark.parametrize(
    ("target", "name"),
    [("a", "a"), (" /a.tar.gz ", "a"), ("a.tgz", "a"), ("a.tar.gz.tgz", "a.tar.gz"), ("a.gz", "a.gz"), ("///", "")],
)
def test_strip_target(target: str, name: str) -> None:
    assert strip_target(target) == name


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("a\\b", "backslashes are not allowed"),
        ("", "model name must be a non-empty string"),
        ("///", "model name must be a non-empty string"),
        (".tgz", "model name must be a non-empty string"),
        ("a/./b", "'.' and '..' path segments are not allowed"),
        ("a/../b", "'.' and '..' path segments are not allowed"),
        ("./a", "'.' and '..' path segments are not allowed"),
        ("a/b/..", "'.' and '..' path segments are not allowed"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a....b", "empty path segment"),
        ("a...b", "must not start or end with '.'"),
        ("a./b", "must not start or end with '.'"),
        ("a/.b", "must not start or end with '.'"),
        ("a/b c", "may only contain"),
        ("a/-b", "may only contain"),
        ("x" * 64 + "/" + "x" * 63, "is 129 characters as a Triton model name"),
        ("x" * 129, "is 129 characters long"),  # a flat name: check_model_name's reason
    ],
)
def test_each_target_refusal_says_why(target: str, why: str) -> None:
    with pytest.raises(ModelNameError, match=re.escape(why)):
        canonical_target(target)


@pytest.mark.parametrize(
    ("target", "name", "path"),
    [
        ("a/b.", "a..b.", "a/b."),  # the last segment may end with '.' (a file name), the others may not
        ("a.b/c", "a.b..c", "a.b/c"),
        ("x" * 63 + "/" + "x" * 63, "x" * 63 + ".." + "x" * 63, "x" * 63 + "/" + "x" * 63),  # 128 characters
        ("a..b", "a..b", "a/b"),
        ("a.b", "a.b", "a.b"),
    ],
)
def test_nested_names_at_their_limits(target: str, name: str, path: str) -> None:
    assert canonical_target(target) == name
    assert target_path(name) == path
    assert is_nested(name) is ("/" in path)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a...", "'.' path segments are not allowed"),
        ("a....b", "empty path segment"),
        ("a...b", "must not start or end with '.'"),
        ("a...b..c", "must not start or end with '.'"),
        ("x" * 129, "is 129 characters long"),
        ("", "non-empty string"),
        (".a", "must not start with '.'"),
    ],
)
def test_target_path_refuses_what_is_no_canonical_name(name: str, why: str) -> None:
    with pytest.raises(ModelNameError, match=re.escape(why)):
        target_path(name)
