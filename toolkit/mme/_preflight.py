"""Refuse, before Triton sees it, a model that Triton would never finish loading.

Measured on tritonserver 2.51: when a python-backend model's version directory has no model file, the stub exits
("Python model file not found") and the backend waits for it for ever. The load call never returns, Triton reports
the model LOADING until it restarts, an unload of it blocks too, and it holds one of Triton's model-load threads
(``--model-load-thread-count``, 4): four such models and no model can be loaded any more. Any invoker can ask for any
model of the store, so such an artifact is refused here, at once, with the reason Triton only writes to its log.

Only that case is checked (a model without any version directory, an empty or broken model.py fail fast in Triton
itself). A model whose ``initialize`` hangs cannot be seen in advance: the load timeout handles it.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from toolkit.repository.protos import model_config_pb2 as mc

DEFAULT_PYTHON_FILE = "model.py"


def _versions_loaded(cfg: mc.ModelConfig, present: list[int]) -> list[int]:
    """The version numbers Triton's version policy picks among those present (default: the latest one)."""
    policy = cfg.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return present
    if which == "specific":
        return [v for v in present if v in set(policy.specific.versions)]
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
    return sorted(present)[-n:]


def never_loads(model_dir: Path) -> str | None:
    """Why Triton would hang loading ``model_dir`` (a python model whose version lacks its model file), else None."""
    try:
        text = (model_dir / "config.pbtxt").read_text()
    except OSError:
        return None
    if "python" not in text:  # cheap first: most configs are not parsed at all
        return None
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg, allow_unknown_field=True)
    except text_format.ParseError:
        return None  # Triton reports a bad config itself, at once
    if cfg.backend != "python":
        return None
    present = {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    filename = cfg.default_model_filename or DEFAULT_PYTHON_FILE
    for version in _versions_loaded(cfg, sorted(present)):
        if not (present[version] / filename).is_file():
            return (
                f"python model file {present[version].name}/{filename} not found in {model_dir.name}/ (Triton would "
                "wait for its stub for ever)"
            )
    return None
