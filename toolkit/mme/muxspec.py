"""Which artifacts a model host can serve, and the host's own Triton model directory.

Why a separate module: the decision is made from files the manager fetched (config.pbtxt, the version folder), with
Triton's protobuf, in the gateway's process; the host itself (``templates/mux_host.py``) runs in a python stub with
no tritonctl and reads only the small ``mux.json`` descriptor written here.

A host serves models of one **tensor signature** (max_batch_size, and the names, types and shapes of the inputs and
outputs): Triton checks a request's tensors against the config of the model it names, and that model is the host.
Models with another signature get a host of their own (``tritonctl_mux_<signature>``), created on first use.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, text_format

from toolkit.mme.muxfiles import ModelFiles
from toolkit.mme.safe_tar import TMP_PREFIX, install_dir
from toolkit.repository.config import parse_config, render_config
from toolkit.repository.protos import model_config_pb2 as mc

TEMPLATE = Path(__file__).parent / "templates" / "mux_host.py"
ADAPTER = Path(__file__).resolve().parents[1] / "repository" / "templates" / "adapter_model.py"
HOST_PREFIX = "tritonctl_mux_"  # no client may name a host: its parameter would pick any model
SERVED = frozenset({"numpy", "sklearn", "onnx"})
DEFAULT_MAX_ARTIFACT_BYTES = 64 << 10  # 64 KiB: see docs/mme.md, "When to multiplex"


def is_host(name: str) -> bool:
    return name.startswith(HOST_PREFIX)


def mux_root(repository: Path) -> Path:
    """Where prepared models live: beside Triton's repository, not in it (Triton's index would list it)."""
    return repository.parent / f".{repository.name}.tritonctl-mux"


@dataclass(frozen=True)
class MuxArtifact:
    """A model the host can serve: its framework, the artifact file and the signature it shares with its host."""

    name: str
    framework: str
    artifact: str  # relative to the model folder, e.g. "1/housing_Austin_TX.py"
    signature: str
    nbytes: int
    methods: dict[str, str] = field(default_factory=dict)
    config: str = field(default="", repr=False)  # its config.pbtxt, for the host's config (``write_host``)

    def descriptor(self) -> bytes:
        doc = {"name": self.name, "framework": self.framework, "artifact": self.artifact, "signature": self.signature}
        return json.dumps({**doc, "methods": self.methods}, sort_keys=True).encode()


def signature_of(cfg: mc.ModelConfig) -> str:
    """A short digest of what Triton checks a request against (and what the host's config must declare)."""
    doc = {
        "max_batch_size": cfg.max_batch_size,
        "input": [json_format.MessageToDict(t, preserving_proto_field_name=True) for t in cfg.input],
        "output": [json_format.MessageToDict(t, preserving_proto_field_name=True) for t in cfg.output],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _param(cfg: mc.ModelConfig, key: str) -> str:
    p = cfg.parameters.get(key)
    return p.string_value if p is not None else ""


_TOP_NAME = re.compile(r'^name: ".*"\n', re.MULTILINE)
_FACTS: dict[str, tuple[str, str, str, str, dict[str, str]]] = {}  # config text less its name -> facts
_ADAPTER: list[bytes] = []


def _facts(text: str) -> tuple[str, str, str, str, dict[str, str]]:
    """(backend, framework, artifact, signature, methods) of a config. Parsing text protobuf costs ~1 ms; renamed
    copies of one model differ only in their top-level ``name``, so the facts are cached by the text without it."""
    key = _TOP_NAME.sub("", text, count=1)
    facts = _FACTS.get(key)
    if facts is None:
        cfg = parse_config(text)
        methods = json.loads(_param(cfg, "tritonctl.methods") or "{}")
        facts = (
            cfg.backend,
            _param(cfg, "tritonctl.framework"),
            _param(cfg, "tritonctl.artifact"),
            signature_of(cfg),
            methods,
        )
        if len(_FACTS) >= 4096:
            _FACTS.clear()
        _FACTS[key] = facts
    return facts


def _adapter() -> bytes:
    if not _ADAPTER:
        _ADAPTER.append(ADAPTER.read_bytes())
    return _ADAPTER[0]


def read_artifact(files: ModelFiles | Path, name: str, max_bytes: int) -> MuxArtifact | str:
    """The artifact as the host will serve it, or why it cannot be (then it gets its own stub, as before).

    ``files``: a model folder, or ``ModelFiles`` (a folder on disk or a tarball read into memory, judged alike). Only
    tritonctl's generated adapters qualify (their ``model.py`` byte for byte): a hand-written ``model.py`` may do
    anything in ``initialize``/``execute`` that the host does not reproduce. A config this protobuf cannot read is
    left to the per-process path, which reports it."""
    if isinstance(files, Path):
        files = ModelFiles.on_disk(files)
    text = files.read("config.pbtxt").decode()
    try:
        backend, framework, artifact, signature, methods = _facts(text)
    except text_format.ParseError as exc:
        return f"config.pbtxt is not read by this protobuf ({exc})"
    if backend != "python" or framework not in SERVED or not artifact:
        return f"not a numpy/sklearn/onnx adapter model (backend {backend!r}, framework {framework!r})"
    versions = files.versions()
    if not versions:
        return "no version folder"
    version = str(versions[-1])
    try:
        adapter = files.read(f"{version}/model.py") == _adapter()
    except OSError:
        adapter = False
    if not adapter:
        return f"{version}/model.py is not tritonctl's adapter"
    if not files.is_file(f"{version}/{artifact}"):
        return f"artifact {version}/{artifact} missing"
    nbytes = files.bytes_under(version)
    if nbytes > max_bytes:
        return f"{nbytes} bytes, over the host's limit of {max_bytes}"
    return MuxArtifact(name, framework, f"{version}/{artifact}", signature, nbytes, dict(methods), text)


@dataclass(frozen=True)
class HostSettings:
    """The host's budgets and policy (``tritonctl serve --multiplex-*``)."""

    budget_bytes: int = 256 << 20
    max_models: int = 0  # 0 = no count limit
    policy: str = "lru"  # or "gdsf": cost-aware (load time / bytes, frequency)
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    instances: int = 1  # processes per host: Triton hands requests to an idle one; each keeps its own models


def host_config(model_cfg: mc.ModelConfig, name: str, root: Path, settings: HostSettings) -> mc.ModelConfig:
    """The host's config: the models' signature, dynamic batching without delay (requests that queue while the host
    is busy are handed over together), ``settings.instances`` CPU instances (processes: a model asked for through
    several is loaded in each, the budgets are per instance), and where its models and budgets are."""
    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=model_cfg.max_batch_size)
    cfg.input.extend(model_cfg.input)
    cfg.output.extend(model_cfg.output)
    if cfg.max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = 0
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.instances)
    params = {
        "tritonctl.mux.root": str(root.resolve()),
        "tritonctl.mux.signature": signature_of(model_cfg),
        "tritonctl.mux.budget_bytes": str(settings.budget_bytes),
        "tritonctl.mux.max_models": str(settings.max_models),
        "tritonctl.mux.policy": settings.policy,
    }
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return cfg


def write_host(repository: Path, model: Path | str, root: Path, settings: HostSettings, scratch: Path) -> str:
    """Write (or refresh) the host for the signature of ``model`` (a model folder, or its config.pbtxt text) in
    Triton's repository; returns its name."""
    model_cfg = parse_config(model if isinstance(model, str) else (model / "config.pbtxt").read_text())
    name = HOST_PREFIX + signature_of(model_cfg)
    text = render_config(host_config(model_cfg, name, root, settings))
    target = repository / name
    current = target / "config.pbtxt"
    if current.is_file() and current.read_text() == text and (target / "1" / "model.py").is_file():
        return name
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{TMP_PREFIX}{name}-"))
    try:
        (tmp / "1").mkdir()
        (tmp / "config.pbtxt").write_text(text)
        shutil.copyfile(TEMPLATE, tmp / "1" / "model.py")
        install_dir(tmp, target, scratch=scratch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return name
