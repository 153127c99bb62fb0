"""tritonctl tune without a server: the space (preferred-size rescaling, legal configs), units, the price table, the
--apply round trip through the manifest (comments and anchors kept) and generate, and perf_analyzer's CSV."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from toolkit.errors import ManifestError
from toolkit.repository.config import parse_config
from toolkit.repository.generate import generate_repository
from toolkit.spec import load_manifest
from toolkit.tune.apply import apply_settings
from toolkit.tune.cost import resolve_price
from toolkit.tune.measure import parse_csv
from toolkit.tune.space import ModelSettings, Point, Space, TuneError, parse_range, parse_time, rescale_preferred

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("sizes", "max_batch", "expected"),
    [
        ([8, 16], 64, [8, 16]),  # all legal: unchanged
        ([8, 16], 16, [8, 16]),
        ([8, 16], 12, [8, 12]),  # 16 dropped, the max takes its place
        ([8, 16], 4, [4]),  # Model Analyzer's failure: every size above the max
        ([8, 16], 1, [1]),
        ([], 8, []),  # no preferred sizes stay none (Triton batches up to the max)
        ([4, 4, 2], 3, [2, 3]),
        ([8], 0, []),  # a model that does not batch has no preferred sizes
    ],
)
def test_rescale_preferred(sizes: list[int], max_batch: int, expected: list[int]) -> None:
    assert rescale_preferred(sizes, max_batch) == expected


def _settings(preferred: list[int], max_batch: int = 64) -> ModelSettings:
    return ModelSettings(
        "m",
        {
            "name": "m",
            "max_batch_size": max_batch,
            "dynamic_batching": {"preferred_batch_size": preferred, "max_queue_delay_microseconds": 200,
                                 "preserve_ordering": True},
            "instance_group": [{"name": "m_0", "kind": "KIND_CPU", "count": 1}, {"kind": "KIND_CPU", "count": 3}],
        },
    )  # fmt: skip


def test_every_point_of_the_space_makes_a_legal_config() -> None:
    """The issue's pitfall: no generated config may carry a preferred size above its max batch size."""
    settings = _settings([8, 16])
    space = Space(max_batch=(1, 2, 3, 4, 8, 12, 16, 64)).including(settings.start())
    seen = 0
    for p in space.points():
        cfg = settings.config_for(p)
        assert cfg["max_batch_size"] == p.max_batch
        assert cfg["instance_group"][0]["count"] == p.instances and cfg["instance_group"][1]["count"] == 3
        db = cfg.get("dynamic_batching")
        assert (db is not None) == p.dynamic
        if db is not None:
            assert all(s <= p.max_batch for s in db["preferred_batch_size"])
            assert db["max_queue_delay_microseconds"] == p.delay_us
            assert db["preserve_ordering"] is True  # fields the search does not own are kept
        seen += 1
    assert seen == 4 * 8 * (5 + 1)
    assert settings.original["dynamic_batching"]["preferred_batch_size"] == [8, 16]  # the original is not mutated


def test_start_point_and_space() -> None:
    s = _settings([8, 16])
    assert s.start() == Point(1, 64, True, 200)
    space = Space(instances=(2,), max_batch=(4,), dynamic=(False,), delays_us=(0,)).including(s.start())
    assert space.instances == (1, 2) and space.max_batch == (4, 64) and space.dynamic == (True, False)
    assert space.delays_us == (0, 200)
    assert Space().for_model(batching=False).max_batch == (0,)
    with pytest.raises(TuneError, match="no instances"):
        Space(instances=())


def test_parse_range_and_time() -> None:
    assert parse_range("1-16", "x") == [1, 2, 4, 8, 16]
    assert parse_range("3-12", "x") == [3, 4, 8, 12]
    assert parse_range("0,100,200", "x") == [0, 100, 200]
    for bad in ("16-1", "a-b", "1,x", ""):
        with pytest.raises(TuneError):
            parse_range(bad, "--max-batch")
    assert parse_time("5ms", "ms") == pytest.approx(0.005)
    assert parse_time("5", "ms") == pytest.approx(0.005)
    assert parse_time("3m", "s") == 180.0
    assert parse_time("250us", "ms") == pytest.approx(0.00025)
    assert parse_time("90", "s") == 90.0
    for bad in ("fast", "-1s", "0"):
        with pytest.raises(TuneError):
            parse_time(bad, "s")


def test_parse_perf_analyzer_csv() -> None:
    text = (
        "Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency\n"
        "4,1949.15,8,1736,3055,4289,6624\n"
    )
    m = parse_csv(text, 4)
    assert (m.concurrency, m.throughput, m.p50_ms, m.p99_ms) == (4, 1949.15, 1.736, 6.624)
    with pytest.raises(TuneError, match="lacks"):
        parse_csv("Concurrency,Inferences/Second\n4,10\n", 4)


MANIFEST = """\
# a manifest with comments and an anchor shared by two models
version: 1

x-io: &io  # shared settings
  max_batch_size: 32
  dynamic_batching: {preferred_batch_sizes: [8, 16], max_queue_delay_microseconds: 200}
  inputs:
    - {name: price, dtype: FP32, dims: [1]}
  outputs:
    - {name: price_dollars, dtype: INT64, dims: [1]}

models:
  - name: post_a  # tuned
    framework: python
    artifact: {artifact}
    <<: *io
  - name: post_b  # shares the anchor, not tuned
    framework: python
    artifact: {artifact}
    <<: *io
    instance_group: [{{kind: CPU, count: 2}}]
deploy:
  role: arn:aws:iam::123456789012:role/r
  bucket: my-bucket-123
  instance_type: ml.m5.xlarge
  prices: {{ml.m5.xlarge: 0.23, ml.c5.xlarge: 0.204}}
"""


def _manifest(tmp_path: Path) -> Path:
    artifact = ROOT / "examples" / "python" / "housing_postprocess.py"
    path = tmp_path / "tritonctl.yaml"
    path.write_text(MANIFEST.replace("{artifact}", str(artifact)).replace("{{", "{").replace("}}", "}"))
    return path


def _config(repo: Path, name: str):  # type: ignore[no-untyped-def]
    return parse_config((repo / name / "config.pbtxt").read_text())


@pytest.mark.parametrize(
    "point", [Point(3, 8, True, 500), Point(2, 4, False, 0), Point(1, 12, True, 0)], ids=lambda p: p.label()
)
def test_apply_round_trip(tmp_path: Path, point: Point) -> None:
    """manifest -> --apply -> manifest -> generate gives the tuned config.pbtxt; comments, the anchor and the other
    model sharing it are untouched."""
    path = _manifest(tmp_path)
    before = path.read_text()
    generate_repository(load_manifest(path), tmp_path / "before")
    original = _config(tmp_path / "before", "post_a")
    text = apply_settings(path, {"post_a": point})
    assert path.read_text() == text
    for kept in ("# a manifest with comments", "x-io: &io  # shared settings", "<<: *io", "post_b  # shares"):
        assert kept in text
    assert [ln for ln in before.splitlines() if ln not in text.splitlines()] == []  # only lines added
    generate_repository(load_manifest(path), tmp_path / "after")
    cfg = _config(tmp_path / "after", "post_a")
    assert cfg.max_batch_size == point.max_batch
    assert cfg.instance_group[0].count == point.instances
    assert cfg.HasField("dynamic_batching") == point.dynamic
    if point.dynamic:
        assert cfg.dynamic_batching.max_queue_delay_microseconds == point.delay_us
        assert list(cfg.dynamic_batching.preferred_batch_size) == rescale_preferred([8, 16], point.max_batch)
    assert cfg.input == original.input and cfg.output == original.output
    b_before, b_after = _config(tmp_path / "before", "post_b"), _config(tmp_path / "after", "post_b")
    assert b_before == b_after  # the anchor's other user is unchanged


def test_apply_refuses_what_would_not_load(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    before = path.read_text()
    with pytest.raises(TuneError, match="no model 'nope'"):
        apply_settings(path, {"nope": Point(1, 8, True, 0)})
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_price_table(tmp_path: Path) -> None:
    spec = load_manifest(_manifest(tmp_path))
    price = resolve_price(None, spec)
    assert price is not None and price.per_hour == 0.23 and price.instance_type == "ml.m5.xlarge"
    assert price.per_million(1000.0) == pytest.approx(0.23 / 3.6)  # 3.6 M inferences per hour
    other = resolve_price(None, spec, "ml.c5.xlarge")
    assert other is not None and other.per_hour == 0.204
    assert resolve_price(0.5, None) is not None and resolve_price(None, None) is None
    with pytest.raises(TuneError, match=r"no price for ml\.g5\.xlarge"):
        resolve_price(None, spec, "ml.g5.xlarge")
    with pytest.raises(TuneError):
        resolve_price(-1.0, None)


def test_price_table_is_validated(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    path.write_text(path.read_text().replace("ml.c5.xlarge: 0.204", "c5: -1"))
    with pytest.raises(ManifestError, match=r"deploy\.prices"):
        load_manifest(path)


def test_copy_of_the_example_manifest_keeps_its_shape(tmp_path: Path) -> None:
    """The root manifest (anchors, comments, ensemble files) through --apply: only the tuned model's lines change."""
    for name in ("tritonctl.yaml",):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "ensembles", tmp_path / "ensembles")
    shutil.copytree(ROOT / "examples" / "artifacts", tmp_path / "examples" / "artifacts")
    shutil.copytree(ROOT / "examples" / "python", tmp_path / "examples" / "python")
    path = tmp_path / "tritonctl.yaml"
    before = path.read_text().splitlines()
    after = apply_settings(path, {"digits_logreg": Point(2, 16, True, 100)}).splitlines()
    added = [ln for ln in after if ln not in before]
    assert [ln for ln in before if ln not in after] == []
    assert added == [
        "    max_batch_size: 16",
        "    dynamic_batching: {preferred_batch_sizes: [8, 16], max_queue_delay_microseconds: 100}",
        "    instance_group: [{kind: CPU, count: 2}]",
    ], textwrap.indent("\n".join(added), "  ")
    spec = load_manifest(path)
    assert spec.model("digits_logreg").max_batch_size == 16 and spec.model("digits_mlp").max_batch_size == 64


def test_apply_replaces_own_keys_in_place_and_one_line_models(tmp_path: Path) -> None:
    """Keys a model sets itself are replaced on their own lines (their comments kept, block values included); a
    one-line ``{...}`` model gets the keys appended inside its braces."""
    artifact = ROOT / "examples" / "python" / "housing_postprocess.py"
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        x-io: &io
          inputs: [{{name: price, dtype: FP32, dims: [1]}}]
          outputs: [{{name: price_dollars, dtype: INT64, dims: [1]}}]
        models:
          - name: own
            framework: python
            artifact: {artifact}
            max_batch_size: 32   # chosen by hand
            dynamic_batching:
              # block style, with a comment inside
              preferred_batch_sizes: [16, 32]
              max_queue_delay_microseconds: 100
            instance_group:
              - kind: CPU
                count: 1
            <<: *io
          - {{name: flat, framework: python, artifact: {artifact}, max_batch_size: 8, <<: *io}}  # one line
        """)
    )
    text = apply_settings(path, {"own": Point(2, 16, True, 500), "flat": Point(3, 4, False, 0)})
    assert "    max_batch_size: 16   # chosen by hand" in text
    assert "    dynamic_batching: {preferred_batch_sizes: [16], max_queue_delay_microseconds: 500}" in text
    assert "      # block style, with a comment inside" in text
    assert "    instance_group: [{kind: CPU, count: 2}]" in text
    assert "    <<: *io" in text
    assert "instance_group: [{kind: CPU, count: 3}]}  # one line" in text
    spec = load_manifest(path)
    own, flat = spec.model("own"), spec.model("flat")
    assert own.max_batch_size == 16 and own.instance_group[0].count == 2 and own.inputs[0].name == "price"
    assert own.dynamic_batching is not None and own.dynamic_batching.max_queue_delay_microseconds == 500
    assert flat.max_batch_size == 4 and flat.instance_group[0].count == 3 and flat.dynamic_batching is None
