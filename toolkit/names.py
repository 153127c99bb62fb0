"""Model names: the one home of the rules that say what a model is called, wherever a name comes from.

A name reaches tritonctl as a manifest entry, an artifact file, a KServe URL segment, a gRPC message field or a
SageMaker ``TargetModel`` header. Each becomes one canonical name, computed once, and that value is what the
multi-model manager loads and what Triton runs: never two spellings of one model (a policy that denies
``housing_Houston_TX`` must not be walked around with ``/housing_Houston_TX.tar.gz``).

The name becomes a directory in a model repository, so it is a single path segment of letters, digits, ``_``,
``.`` and ``-``, starting with a letter, digit or ``_`` (never ``.``: no hidden or ``..`` directories), at most 128
characters. Such a name needs no percent-encoding in a URL, so a URL segment that is not already canonical is refused.

**Nested TargetModels.** On SageMaker a TargetModel is a path relative to the endpoint's S3 prefix
(``team-a/cities/Chicago_IL.tar.gz``), and the model's identity is that path, not the name inside its config.pbtxt.
Its Triton name joins the path's segments with ``..`` (``team-a..cities..Chicago_IL``): readable, and reversible
because ``..`` is reserved as the separator. A segment may not be empty, ``.`` or ``..``, may not start with ``.``
and (but for the last) may not end with ``.``; so ``..`` occurs in a canonical name only between segments and
``target_path`` splits it back unambiguously. The rule changed deliberately here: a *flat* name containing ``..``
(``a..b``) now designates the nested path ``a/b`` (its artifact is ``a/b.tar.gz``, not ``a..b.tar.gz``), and
``a...b`` or ``a..`` designate nothing. Backslashes, absolute paths (beyond leading ``/``s, which SageMaker's own
spelling carries) and names over 128 characters as Triton names are refused with the reason.

    canonical_target("/NY_0.tar.gz")                      -> "NY_0"
    canonical_target("team-a/cities/Chicago_IL.tar.gz")   -> "team-a..cities..Chicago_IL"
    canonical_target("team-a..cities..Chicago_IL")        -> "team-a..cities..Chicago_IL"   (a fixed point)
    target_path("team-a..cities..Chicago_IL")             -> "team-a/cities/Chicago_IL"     (the store's key, less
                                                                                              .tar.gz / .tgz / /)

**Policies match the readable path, not the Triton name.** ``sagemaker:TargetModel`` conditions are IAM globs (``*``
any run, ``?`` one character) written against SageMaker's paths (``team-a/*``). No rewriting of such a glob into the
``..`` spelling is exact: ``?`` matches the one character ``/`` but not the two of ``..``, and a literal ``.`` next
to a wildcard matches half a separator (``a.*`` would match ``a..x``, i.e. the path ``a/x``, which ``a.*`` does not
match: an Allow would grant more than it says). So the policy context carries ``target_path(name)`` -- one spelling
per model, a bijection with the Triton name -- and ``strip_target`` turns a policy's values into that same path
spelling (leading ``/`` and one suffix dropped; a value written in the ``..`` spelling read as the path it stands
for). For a flat name both spellings are the same string, so flat policies are unchanged. The canonical Triton name
stays internal: URLs, the manager, the disk cache, Triton and its metrics use it.
"""

from __future__ import annotations

import re

from toolkit.errors import TritonctlError

MAX_NAME_CHARS = 128
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
ARTIFACT_SUFFIXES = (".tar.gz", ".tgz")  # what SageMaker's TargetModel carries after the model's name
SEPARATOR = ".."  # a nested TargetModel's "/" in its Triton name


class ModelNameError(TritonctlError, ValueError):
    """Not a valid model name; the message says why and what is allowed (a ValueError, for pydantic validators)."""


_VALID: set[str] = set()  # names that passed (bounded): every request's name is checked, most names recur
_VALID_MAX = 4096


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else ModelNameError saying why."""
    if type(name) is str and name in _VALID:
        return name
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
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(name)
    return name


def _drop_suffix(path: str) -> str:
    for suffix in ARTIFACT_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def strip_target(target: str) -> str:
    """A SageMaker TargetModel as written (``/team-a/city.tar.gz``) -> the path it designates (``team-a/city``),
    unchecked. The same function rewrites the ``sagemaker:TargetModel`` values of access policies (globs included), so
    a policy written in any spelling is compared with the request's ``target_path``."""
    return _drop_suffix(target.strip().lstrip("/")).replace(SEPARATOR, "/")


def _check_segments(segments: list[str], what: str) -> None:
    """Each segment of a nested path is a model name of its own that keeps ``..`` unambiguous as the separator."""
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            raise ModelNameError(f"{what}: '{seg}' path segments are not allowed")
        if not seg:
            raise ModelNameError(f"{what}: empty path segment ('//', a trailing '/', or '..' with nothing on one side)")
        if seg.startswith(".") or (i < last and seg.endswith(".")):
            raise ModelNameError(f"{what}: folder or file name {seg!r} must not start or end with '.'")
        if not MODEL_NAME_RE.match(seg):
            raise ModelNameError(
                f"{what}: {seg[:80]!r} may only contain letters, digits, '_', '-' and '.' (first: a letter, digit or _)"
            )


def canonical_target(target: str) -> str:
    """A SageMaker TargetModel header -> the canonical (Triton) model name (ModelNameError when there is none)."""
    what = f"TargetModel {target[:80]!r}"
    path = _drop_suffix(target.strip().lstrip("/"))
    if path.endswith(ARTIFACT_SUFFIXES):
        raise ModelNameError(f"{what} carries the artifact suffix twice")
    if "\\" in path:
        raise ModelNameError(f"{what}: backslashes are not allowed (separate folders with '/')")
    if not path:
        raise ModelNameError(f"{what}: model name must be a non-empty string")
    raw = path.split("/")
    if any(seg in (".", "..") for seg in raw):
        raise ModelNameError(f"{what}: '.' and '..' path segments are not allowed")
    segments = [part for seg in raw for part in seg.split(SEPARATOR)]
    name = SEPARATOR.join(segments)
    if len(segments) > 1:
        _check_segments(segments, what)
        if len(name) > MAX_NAME_CHARS:
            raise ModelNameError(
                f"{what} is {len(name)} characters as a Triton model name ({SEPARATOR!r} for each '/'; at most "
                f"{MAX_NAME_CHARS}): use a shorter path"
            )
    try:
        return check_model_name(name)
    except ModelNameError as exc:
        raise ModelNameError(f"{what}: {exc}") from None


def target_path(name: str) -> str:
    """A canonical model name -> the TargetModel path it stands for (``team-a..x`` -> ``team-a/x``; a flat name is
    its own path). The artifact store finds the model at this path plus ``.tar.gz``, ``.tgz`` or ``/config.pbtxt``;
    the policy context carries it. ModelNameError when ``name`` is not a canonical name (``a...b``, ``a..``)."""
    check_model_name(name)
    if SEPARATOR not in name:
        return name
    segments = name.split(SEPARATOR)
    _check_segments(segments, f"model name {name!r}")
    return "/".join(segments)


def is_nested(name: str) -> bool:
    """Whether a canonical name stands for a nested TargetModel path (shown as that path by ``mme list``)."""
    return SEPARATOR in name
