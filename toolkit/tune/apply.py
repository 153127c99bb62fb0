"""``tritonctl tune --apply``: write the winning settings back into the manifest, keeping its comments and anchors.

A manifest is hand-written, with comments and ``x-`` anchors shared by several models (``<<: *digits_io``); a PyYAML
dump would drop every comment and expand every alias, and even ruamel.yaml's round trip moves some comments (an end-of-
line comment after ``x-io: &io`` lands on the next line). So the file is edited as text: ruamel.yaml's round-trip
loader only says where each model and each of its own keys is (line and column), and exactly the tuned keys' lines
are replaced or added; every other byte stays. A tuned key that came from a merged anchor is added to the model's own
mapping, which overrides the anchor for that model alone -- the anchor and the other models using it are untouched.
Dynamic batching turned off where the model had it is written as ``dynamic_batching: null``. A layout this editor does
not handle (a key of a one-line ``{...}`` model that is its own) falls back to ruamel.yaml's round-trip dump.

The new text is checked with ``load_manifest`` before it replaces the old file, so --apply never leaves a manifest that
does not load; ``generate`` then writes the tuned config.pbtxt (tests/unit/test_tune_offline.py checks the round trip).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from toolkit.errors import TritonctlError
from toolkit.tune.space import Point, TuneError, rescale_preferred

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_RESERVED = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}
Edit = tuple[int, int, list[str]]  # replace lines [start, end) with these lines


class _Unsupported(Exception):
    """A layout the line editor leaves to ruamel.yaml's dump."""


def flow(value: Any) -> str:
    """A value as one line of YAML flow style (what the tuned keys are written as)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value if _PLAIN.match(value) and value.lower() not in _RESERVED else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(flow(v) for v in value) + "]"


def tuned_values(m: Mapping[str, Any], p: Point) -> dict[str, Any]:
    """The keys a point sets in a manifest model (merged anchor values read through), as plain values."""
    out: dict[str, Any] = {}
    old = m.get("dynamic_batching")
    if p.max_batch > 0:
        out["max_batch_size"] = p.max_batch
        if p.dynamic:
            rest = {
                k: v
                for k, v in (old or {}).items()
                if k not in ("preferred_batch_sizes", "max_queue_delay_microseconds")
            }
            preferred = rescale_preferred(list((old or {}).get("preferred_batch_sizes") or []), p.max_batch)
            db: dict[str, Any] = {"preferred_batch_sizes": preferred} if preferred else {}
            out["dynamic_batching"] = {**db, "max_queue_delay_microseconds": p.delay_us, **rest}
        elif old is not None:
            out["dynamic_batching"] = None
    groups = [dict(g) for g in (m.get("instance_group") or [{"kind": "CPU"}])]
    groups[0]["count"] = p.instances
    out["instance_group"] = groups
    return out


def _model_index(data: Any, name: str, path: Path) -> int:
    for i, m in enumerate((data or {}).get("models") or []):
        if isinstance(m, CommentedMap) and m.get("name") == name:
            return i
    raise TuneError(f"{path} has no model {name!r} under models: (ensemble steps must be models of the manifest)")


def _item_end(lines: list[str], data: CommentedMap, i: int) -> int:
    """The line after model ``i``'s last one; blank and comment lines before the next item belong to that item."""
    models = data["models"]
    if i + 1 < len(models):
        end = models.lc.item(i + 1)[0]
    else:
        keys = list(data.keys())
        later = keys[keys.index("models") + 1 :]
        end = data.lc.key(later[0])[0] if later else len(lines)
    start = models.lc.item(i)[0]
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _value_end(lines: list[str], kl: int, kc: int, end: int) -> int:
    """The line after the value of the key at line ``kl``, column ``kc``: the next line indented no deeper that is
    not blank or a comment (the next key, ``<<: *anchor`` included), at most ``end``."""
    j = kl + 1
    while j < end:
        ln = lines[j]
        if ln.strip() and not ln.lstrip().startswith("#") and len(ln) - len(ln.lstrip()) <= kc:
            break
        j += 1
    return j


def _line(key: str, value: Any, col: int, comment: str = "") -> str:
    return " " * col + f"{key}: {flow(value)}" + comment


def _flow_value_end(line: str, start: int) -> int:
    """Where a flow value starting at ``start`` ends: the first ``,`` or closing bracket outside nested brackets."""
    depth = 0
    for j in range(start, len(line)):
        ch = line[j]
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return j
            depth -= 1
        elif ch == "," and depth == 0:
            return j
    raise _Unsupported


def _matching_brace(line: str, opening: int) -> int:
    depth = 0
    for j in range(opening, len(line)):
        depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(line[j], 0)
        if depth == 0:
            return j
    raise _Unsupported


def _flow_model_edit(lines: list[str], m: CommentedMap, own: dict[str, Any], values: dict[str, Any]) -> Edit:
    """A one-line ``- {name: ..., <<: *anchor}`` model: own keys' values replaced in place (right to left, so the
    columns stay true), the others appended before the closing brace."""
    at = m.lc.line
    if not all(v[0] == v[2] == at for v in own.values()):
        raise _Unsupported
    line = lines[at]
    for key in sorted((k for k in values if k in own), key=lambda k: -own[k][3]):
        vc = own[key][3]
        stop = _flow_value_end(line, vc)
        line = line[:vc] + flow(values[key]) + line[stop:]
    close = _matching_brace(line, line.index("{", m.lc.col))
    extra = "".join(f", {k}: {flow(v)}" for k, v in values.items() if k not in own)
    return (at, at + 1, [line[:close] + extra + line[close:]])


def _model_edits(lines: list[str], data: CommentedMap, i: int, values: dict[str, Any]) -> list[Edit]:
    m: CommentedMap = data["models"][i]
    own = dict(m.lc.data)
    if m.fa.flow_style():
        return [_flow_model_edit(lines, m, own, values)]
    end = _item_end(lines, data, i)
    edits: list[Edit] = []
    added = []
    for key, value in values.items():
        if key not in own:
            added.append(_line(key, value, m.lc.col, "  # tritonctl tune" if value is None else ""))
            continue
        kl, kc = own[key][0], own[key][1]
        nxt = _value_end(lines, kl, kc, end)
        hash_at = lines[kl].find(" #", own[key][3])
        value_end = len(lines[kl][:hash_at].rstrip())
        comment = lines[kl][value_end:] if hash_at >= 0 and nxt == kl + 1 else ""
        kept = [ln for ln in lines[kl + 1 : nxt] if ln.lstrip().startswith("#")]
        edits.append((kl, nxt, [_line(key, value, kc, comment), *kept]))
    if added:
        edits.append((end, end, added))
    return edits


def _text_edit(text: str, data: CommentedMap, settings: dict[str, Point], path: Path) -> str:
    lines = text.split("\n")
    edits: list[Edit] = []
    for name, p in settings.items():
        i = _model_index(data, name, path)
        edits += _model_edits(lines, data, i, tuned_values(data["models"][i], p))
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:end] = new
    return "\n".join(lines)


def _yaml() -> YAML:
    y = YAML()  # round-trip mode: comments, anchors, key order and quoting survive (mostly: see the docstring)
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _dump_edit(data: CommentedMap, settings: dict[str, Point], path: Path) -> str:
    for name, p in settings.items():
        m = data["models"][_model_index(data, name, path)]
        for key, value in tuned_values(m, p).items():
            m[key] = _commented(value)
    buf = io.StringIO()
    _yaml().dump(data, buf)
    return buf.getvalue()


def _commented(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = CommentedMap((k, _commented(v)) for k, v in value.items())
        out.fa.set_flow_style()
        return out
    if isinstance(value, list):
        seq = CommentedSeq(_commented(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    return value


def apply_settings(path: Path, settings: dict[str, Point]) -> str:
    """Write each model's point into the manifest at ``path``; returns the new text (already written)."""
    from toolkit.spec import load_manifest

    text = path.read_text()
    if not settings:  # the original config won: nothing to write
        return text
    data = _yaml().load(text)
    try:
        new = _text_edit(text, data, settings, path)
    except _Unsupported:
        new = _dump_edit(data, settings, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
        try:
            load_manifest(Path(tmp))
        except TritonctlError as exc:
            raise TuneError(f"the tuned manifest would not load, {path} left as it was: {exc}") from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return new
