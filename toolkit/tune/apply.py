"""``tritonctl tune --apply``: write the winning settings back into the manifest, keeping its comments and anchors.

Why ruamel.yaml's round trip and not PyYAML: a manifest is hand-written, with comments and ``x-`` anchors shared by
several models (``<<: *digits_io``); a PyYAML dump would drop every comment and expand every alias. The round trip
changes only the keys tuned. A tuned key that came from a merged anchor is written into the model's own mapping,
which overrides the anchor for that model alone -- the anchor and the other models using it stay as they were.
Dynamic batching turned off where an anchor turns it on is written as ``dynamic_batching: null``.

The file is checked with ``load_manifest`` before it replaces the old one, so --apply never leaves a manifest that
does not load; ``generate`` then writes the tuned config.pbtxt (the round-trip test checks that).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from toolkit.errors import TritonctlError
from toolkit.tune.space import Point, TuneError, rescale_preferred


def _yaml() -> YAML:
    y = YAML()  # round-trip mode: comments, anchors, key order and quoting survive
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _flow(items: list[tuple[str, Any]]) -> CommentedMap:
    m = CommentedMap(items)
    m.fa.set_flow_style()
    return m


def _model_map(data: Any, name: str, path: Path) -> CommentedMap:
    for m in (data or {}).get("models") or []:
        if isinstance(m, CommentedMap) and m.get("name") == name:
            return m
    raise TuneError(f"{path} has no model {name!r} under models: (ensemble steps must be models of the manifest)")


def _set_batching(m: CommentedMap, p: Point) -> None:
    if p.max_batch <= 0:
        return
    m["max_batch_size"] = p.max_batch
    old = m.get("dynamic_batching")
    if not p.dynamic:
        if old is not None:
            m["dynamic_batching"] = None  # null also overrides an anchor's dynamic batching
            m.yaml_add_eol_comment("tritonctl tune: dynamic batching off", "dynamic_batching")
        return
    kept = [
        (k, v) for k, v in (old or {}).items() if k not in ("preferred_batch_sizes", "max_queue_delay_microseconds")
    ]
    preferred = rescale_preferred(list((old or {}).get("preferred_batch_sizes") or []), p.max_batch)
    items: list[tuple[str, Any]] = [("preferred_batch_sizes", preferred)] if preferred else []
    m["dynamic_batching"] = _flow([*items, ("max_queue_delay_microseconds", p.delay_us), *kept])


def _set_instances(m: CommentedMap, p: Point) -> None:
    groups = m.get("instance_group")
    if groups:
        first = CommentedMap(groups[0])
        first["count"] = p.instances
        first.fa.set_flow_style()
        new = CommentedSeq([first, *groups[1:]])
    else:
        new = CommentedSeq([_flow([("kind", "CPU"), ("count", p.instances)])])
    new.fa.set_flow_style()
    m["instance_group"] = new


def apply_settings(path: Path, settings: dict[str, Point]) -> str:
    """Write each model's point into the manifest at ``path``; returns the new text (already written)."""
    from toolkit.spec import load_manifest

    if not settings:  # the original config won: nothing to write
        return path.read_text()
    y = _yaml()
    data = y.load(path.read_text())
    for name, p in settings.items():
        m = _model_map(data, name, path)
        _set_batching(m, p)
        _set_instances(m, p)
    buf = io.StringIO()
    y.dump(data, buf)
    text = buf.getvalue()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            load_manifest(Path(tmp))
        except TritonctlError as exc:
            raise TuneError(f"the tuned manifest would not load, {path} left as it was: {exc}") from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return text
