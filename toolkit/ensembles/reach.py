"""Which models a model may call: ensemble steps and the targets of tritonctl's generated routers, transitively.

Why: an access policy that denies ``housing_Houston_TX`` is walked around if ``housing_by_city`` (a router) or an
ensemble that contains it may call Houston's model for the caller. The gateway authorizes every model a request may
reach, as if each were called directly, before Triton runs anything. Routers choose their target per request from
the request's own data, so what counts is every target the config names (routes, rules, default, A/B variants):
the reach is decided from config, never from the request.

Only what a config declares is known: a hand-written python model that calls other models through BLS names them
in code, which no reader of configs can see (docs/gateway.md says so).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from google.protobuf import text_format

from toolkit.repository.protos import model_config_pb2 as mc


def _param(cfg: mc.ModelConfig, key: str) -> str:
    p = cfg.parameters.get(key)
    return p.string_value if p is not None else ""


def direct_targets(cfg: mc.ModelConfig) -> set[str]:
    """The models one config may call itself: its ensemble steps, or its router targets."""
    out = {s.model_name for s in cfg.ensemble_scheduling.step}
    if "tritonctl.mode" in cfg.parameters:  # a generated router: every target it could choose
        routes = json.loads(_param(cfg, "tritonctl.routes") or "{}")
        rules = json.loads(_param(cfg, "tritonctl.rules") or "[]")
        variants = json.loads(_param(cfg, "tritonctl.variants") or "[]")
        out |= {str(m) for m in routes.values()} if isinstance(routes, dict) else set()
        out |= {str(r.get("model")) for r in rules if isinstance(r, dict) and r.get("model")}
        out |= {str(v.get("model")) for v in variants if isinstance(v, dict) and v.get("model")}
        if _param(cfg, "tritonctl.default"):
            out.add(_param(cfg, "tritonctl.default"))
    out.discard("")
    return out


class ReachMap:
    """Transitive reach of the models in one repository, re-read when a config file changes (its mtime)."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._direct: dict[str, tuple[int, frozenset[str]]] = {}

    def _targets(self, model: str) -> frozenset[str]:
        path = self.repository / model / "config.pbtxt"
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return frozenset()  # not (yet) in the repository: nothing it could call is known
        got = self._direct.get(model)
        if got is not None and got[0] == mtime:
            return got[1]
        cfg = mc.ModelConfig()
        try:
            text_format.Parse(path.read_text(), cfg)
            targets = frozenset(direct_targets(cfg))
        except (OSError, text_format.ParseError, ValueError):
            targets = frozenset()  # Triton cannot load it either
        self._direct[model] = (mtime, targets)
        return targets

    def reached(self, model: str) -> list[str]:
        """Every model ``model`` may call, directly or through others (without ``model`` itself), in a stable order."""
        seen: dict[str, None] = {}
        todo = list(self._targets(model))
        while todo:
            m = todo.pop()
            if m in seen or m == model:
                continue
            seen[m] = None
            todo.extend(self._targets(m))
        return sorted(seen)
