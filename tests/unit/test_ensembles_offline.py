"""Ensemble generation and drawing without a server: automatic tensor mapping, every spec error names the ensemble,
the step and the tensor, and ``tritonctl graph`` output: SVG through graphviz (the Makefile installs it), Mermaid
always, and Mermaid instead of SVG where graphviz is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from toolkit.ensembles import EnsembleError, build_ensembles, check_ensemble_configs
from toolkit.ensembles.draw import GraphError
from toolkit.repository.config import parse_config, render_config
from toolkit.repository.generate import generate_repository, generated_models
from toolkit.spec import load_manifest
from toolkit.spec.models import EnsembleSpec, Manifest, ModelSpec, StepSpec, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "tritonctl.yaml"


def _model(name: str, ins: list[tuple[str, str, list[int]]], outs: list[tuple[str, str, list[int]]], mbs: int = 8):
    return ModelSpec(
        name=name,
        framework="python",
        artifact=Path("model.py"),
        max_batch_size=mbs,
        inputs=[TensorSpec(name=n, dtype=d, dims=s) for n, d, s in ins],  # type: ignore[arg-type]
        outputs=[TensorSpec(name=n, dtype=d, dims=s) for n, d, s in outs],  # type: ignore[arg-type]
    )


MODELS = [
    _model("pre", [("raw", "FP32", [8])], [("features", "FP32", [4])]),
    _model("net", [("features", "FP32", [4])], [("score", "FP32", [1])]),
    _model("post", [("value", "FP32", [1])], [("rounded", "INT64", [1])]),  # name differs: mapped by type
    _model("ints", [("features", "INT32", [4])], [("score", "FP32", [1])]),
    _model("small", [("features", "FP32", [4])], [("score", "FP32", [1])], mbs=2),
]


def build(*ensembles: EnsembleSpec) -> dict[str, object]:
    gms = build_ensembles(Manifest(models=MODELS, ensembles=list(ensembles)))
    return {g.name: g.config for g in gms}


def test_pipeline_maps_by_name_then_by_type_and_prunes_unused_outputs() -> None:
    cfg = build(EnsembleSpec(name="p", pattern="pipeline", models=["pre", "net", "post"]))["p"]
    steps = cfg.ensemble_scheduling.step  # type: ignore[attr-defined]
    assert dict(steps[1].input_map) == {"features": "pre__features"}
    assert dict(steps[2].input_map) == {"value": "net__score"}  # score FP32[1] -> value FP32[1]
    assert [t.name for t in cfg.output] == ["rounded"] and cfg.max_batch_size == 8  # type: ignore[attr-defined]
    assert 'platform: "ensemble"' in render_config(cfg)  # type: ignore[arg-type]


def test_pipeline_explicit_maps_and_declared_outputs() -> None:
    spec = EnsembleSpec(
        name="p",
        pattern="pipeline",
        steps=[
            StepSpec(model="pre"),
            StepSpec(model="net", input_map={"features": "features"}, output_map={"score": "raw_score"}),
        ],
        outputs=[TensorSpec(name="raw_score", dtype="FP32", dims=[1])],
    )
    cfg = build(spec)["p"]
    assert dict(cfg.ensemble_scheduling.step[1].output_map) == {"score": "raw_score"}  # type: ignore[attr-defined]
    assert check_ensemble_configs({**{g.name: g.config for g in _plain()}, "p": cfg}, {}) == []  # type: ignore[dict-item]


def _plain():  # type: ignore[no-untyped-def]
    return generated_models(Manifest(models=MODELS))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (EnsembleSpec(name="e", pattern="pipeline", models=["pre"]), ["'e'", "2 to 15 steps"]),
        (EnsembleSpec(name="e", pattern="pipeline", models=["pre"] * 16), ["'e'", "2 to 15 steps"]),
        (EnsembleSpec(name="e", pattern="pipeline", models=["pre", "nope"]), ["'e'", "step 1 (nope)", "'nope'"]),
        (
            EnsembleSpec(name="e", pattern="pipeline", models=["pre", "ints"]),
            ["step 1 (ints)", "'features'", "INT32[4]", "FP32[4]"],
        ),
        (
            EnsembleSpec(name="e", pattern="pipeline", models=["pre", "net"], max_batch_size=16),
            ["max_batch_size 16", "'pre'", "8"],
        ),
        (
            EnsembleSpec(
                name="e", pattern="pipeline", steps=[StepSpec(model="pre"), StepSpec(model="net", input_map={"x": "y"})]
            ),
            ["step 1 (net)", "input_map names 'x'"],
        ),
        (
            EnsembleSpec(
                name="e",
                pattern="pipeline",
                models=["pre", "net"],
                outputs=[TensorSpec(name="zz", dtype="FP32", dims=[1])],
            ),
            ["declared output 'zz'"],
        ),
        (EnsembleSpec(name="e", pattern="scatter_gather", models=["pre", "net"]), ["step 1 (net)", "differ"]),
        (EnsembleSpec(name="e", pattern="aggregate", models=["net", "small"], options={}), ["options.method"]),
        (
            EnsembleSpec(name="e", pattern="aggregate", models=["net", "small"], options={"method": "mean"}),
            ["step 0 (net)", "no output 'probabilities'"],
        ),
        (
            EnsembleSpec(
                name="e",
                pattern="aggregate",
                models=["net", "small"],
                options={"method": "weighted_mean", "score": "score", "weights": [1]},
            ),
            ["weights", "one per model (2)"],
        ),
        (
            EnsembleSpec(
                name="e", pattern="dynamic", options={"by": "parameter", "key": "k", "routes": {"a": "net", "b": "pre"}}
            ),
            ["route 'pre'", "interchangeable"],
        ),
        (EnsembleSpec(name="e", pattern="dynamic", options={"by": "parameter", "kye": "k"}), ["options.kye"]),
        (
            EnsembleSpec(name="e", pattern="ab", options={"variants": [{"name": "a", "model": "net"}]}),
            ["options.variants"],
        ),
        # malformed options are reported by option, not met first as AttributeError/TypeError
        (EnsembleSpec(name="e", pattern="dynamic", options={"by": "input", "routes": ["net"]}), ["options.routes"]),
        (EnsembleSpec(name="e", pattern="dynamic", options={"by": "rules", "rules": ["net"]}), ["options.rules.0"]),
        (EnsembleSpec(name="e", pattern="dynamic", options={"by": "rules", "default": ["net"]}), ["options.default"]),
        (EnsembleSpec(name="e", pattern="ab", options={"variants": ["net", "small"]}), ["options.variants.0"]),
    ],
)
def test_spec_errors_name_ensemble_step_and_tensor(spec: EnsembleSpec, words: list[str]) -> None:
    with pytest.raises(EnsembleError) as exc:
        build(spec)
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_routers_take_the_smallest_batch_and_expose_the_route() -> None:
    cfgs = build(
        EnsembleSpec(
            name="r", pattern="dynamic", options={"by": "input", "key": "k", "routes": {"a": "net", "b": "small"}}
        )
    )
    r = cfgs["r"]
    assert r.max_batch_size == 2 and r.HasField("dynamic_batching")  # type: ignore[attr-defined]
    assert [t.name for t in r.input] == ["features", "k"] and [t.name for t in r.output] == ["score", "model"]  # type: ignore[attr-defined]


def test_example_manifest_generates_every_ensemble_and_passes_checks(tmp_path: Path) -> None:
    m = load_manifest(MANIFEST)
    names = {e.name for e in m.ensembles}
    assert {"digits_scatter_gather", "digits_vote", "digits_mean", "housing_pipeline_Chicago_IL"} <= names
    generate_repository(m, tmp_path)
    configs = {p.parent.name: parse_config(p.read_text()) for p in tmp_path.glob("*/config.pbtxt")}
    assert names <= set(configs)
    assert check_ensemble_configs(configs, {}) == []
    assert (tmp_path / "digits_vote" / "1" / ".keep").is_file()  # Triton needs the version directory
    assert (tmp_path / "digits_vote_aggregator" / "1" / "model.py").read_bytes() == (
        ROOT / "toolkit/ensembles/templates/aggregate.py"
    ).read_bytes()  # copied verbatim: behaviour comes from config parameters


def test_graph_mermaid_lists_steps_tensors_and_routes() -> None:
    from toolkit.cli.graph import graph

    text = graph("housing_city_pipeline", MANIFEST, None)
    assert text.startswith("%% ensemble housing_city_pipeline") and "flowchart LR" in text
    for part in ["housing_preprocess", '-->|"features"|', '-.->|"city=Houston_TX"|', "out_price_dollars"]:
        assert part in text, part
    with pytest.raises(GraphError, match="digits_vote"):
        graph("nope", MANIFEST, None)


def test_graph_svg_with_graphviz(tmp_path: Path) -> None:
    from toolkit.cli.graph import graph

    assert shutil.which("dot"), "graphviz is missing: `make graphviz` installs it (Debian: apt-get install graphviz)"
    line = graph("digits_scatter_gather", MANIFEST, tmp_path / "sg.svg")
    svg = (tmp_path / "sg.svg").read_text()
    assert "wrote SVG" in line and "<svg" in svg and "digits_scatter_gather_picker" in svg


def test_graph_without_graphviz_degrades_to_mermaid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.cli.graph import graph

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `dot` anywhere on PATH
    line = graph("digits_vote", MANIFEST, tmp_path / "v.png")
    assert "graphviz 'dot' is not installed" in line and "apt-get install graphviz" in line
    assert not (tmp_path / "v.png").exists() and "flowchart LR" in (tmp_path / "v.mmd").read_text()
