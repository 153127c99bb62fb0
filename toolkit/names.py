"""Model names: the one home of the rules that say what a model is called, wherever a name comes from.

A name reaches tritonctl as a manifest entry, an artifact file, a KServe URL segment, a gRPC message field or a
SageMaker ``TargetModel`` header. Each becomes one canonical name, computed once, and that value is what the policy
checks, what the multi-model manager loads and what Triton runs: never two spellings of one model (a policy that
denies ``housing_Houston_TX`` must not be walked around with ``/housing_Houston_TX.tar.gz``).

The name becomes a directory in a model repository, so it is a single path segment of letters, digits, ``_``,
``.`` and ``-``, starting with a letter, digit or ``_`` (never ``.``: no hidden or ``..`` directories), at most 128
characters. Such a name needs no percent-encoding in a URL, so a URL segment that is not already canonical is refused.
"""

from __future__ import annotations

import re

from toolkit.errors import TritonctlError

MAX_NAME_CHARS = 128
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
ARTIFACT_SUFFIXES = (".tar.gz", ".tgz")  # what SageMaker's TargetModel carries after the model's name


class ModelNameError(TritonctlError, ValueError):
    """Not a valid model name; the message says why and what is allowed (a ValueError, for pydantic validators)."""


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else ModelNameError saying why."""
    if not isinstance(name, str) or not name:
        raise ModelNameError("model name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise ModelNameError(f"model name {name[:40]!r}... is {len(name)} characters long (at most {MAX_NAME_CHARS})")
    if name.startswith("."):
        raise ModelNameError(f"model name {name!r} must not start with '.'")
    if not MODEL_NAME_RE.match(name):
        raise ModelNameError(
            f"model name {name[:80]!r} may only contain letters, digits, '_', '-' and '.' (first: a letter, digit or _)"
        )
    return name


def strip_target(target: str) -> str:
    """A SageMaker TargetModel as written (``/city.tar.gz``) -> the name it designates (``city``), unchecked.

    The same function rewrites the ``sagemaker:TargetModel`` values of access policies, so a policy written
    against either spelling matches every spelling of a request.
    """
    name = target.strip().lstrip("/")
    for suffix in ARTIFACT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def canonical_target(target: str) -> str:
    """A SageMaker TargetModel header -> the canonical model name (ModelNameError when there is none)."""
    name = strip_target(target)
    if name.endswith(ARTIFACT_SUFFIXES):
        raise ModelNameError(f"TargetModel {target[:80]!r} carries the artifact suffix twice")
    try:
        return check_model_name(name)
    except ModelNameError as exc:
        raise ModelNameError(f"TargetModel {target[:80]!r}: {exc}") from None
