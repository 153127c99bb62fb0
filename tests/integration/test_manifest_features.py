"""Every manifest feature renders into a config the real Triton accepts and honours: versions with a specific
version policy, dynamic batching with a queue policy, instance groups, warmup, response cache, parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from toolkit.repository.generate import generate_repository
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.spec import load_manifest

ART = Path(__file__).resolve().parents[2] / "examples" / "artifacts"
MANIFEST = """
models:
  - name: full
    framework: numpy
    versions: [{version: 1, artifact: digits_mlp.py}, {version: 3, artifact: digits_mlp.py}]
    version_policy: {specific: [1, 3]}
    max_batch_size: 16
    dynamic_batching:
      preferred_batch_sizes: [4, 8]
      max_queue_delay_microseconds: 100
      preserve_ordering: true
      queue_policy: {timeout_action: REJECT, default_timeout_microseconds: 1000000, max_queue_size: 64}
    instance_group: [{kind: CPU, count: 2}]
    warmup:
      - {name: zeros, batch_size: 2, inputs: {X: {dtype: FP32, dims: [64], data: zero}}}
      - {name: rand, batch_size: 1, count: 2, inputs: {X: {dtype: FP32, dims: [64], data: random}}}
    response_cache: true
    parameters: {note: hello}
    inputs: [{name: X, dtype: FP32, dims: [64]}]
    outputs: [{name: probabilities, dtype: FP32, dims: [10]}, {name: label, dtype: INT64, dims: [1]}]
"""


def test_full_featured_model_loads_and_caches(tmp_path: Path) -> None:
    for f in ("digits_mlp.py", "digits_mlp.npz"):
        shutil.copy(ART / f, tmp_path / f)
    (tmp_path / "m.yaml").write_text(MANIFEST)
    generate_repository(load_manifest(tmp_path / "m.yaml"), tmp_path / "repo")
    assert (tmp_path / "repo" / "full" / "3" / "digits_mlp.npz").is_file()
    options = ServerOptions(repository=tmp_path / "repo", workdir=tmp_path, response_cache_bytes=1 << 20)
    with EmbeddedTriton(options) as server:
        admin = TritonAdmin(server.endpoint)
        admin.load("full")
        versions = sorted(m["version"] for m in admin.index() if m["name"] == "full" and m["state"] == "READY")
        assert versions == ["1", "3"]
        config = admin.config("full")
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
        assert len(config["model_warmup"]) == 2 and config["instance_group"][0]["count"] == 2
        client = httpclient.InferenceServerClient(server.endpoint.http)
        x = httpclient.InferInput("X", [1, 64], "FP32")
        x.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
        first = client.infer("full", [x], model_version="3").as_numpy("probabilities")
        for _ in range(2):
            again = client.infer("full", [x], model_version="3").as_numpy("probabilities")
            np.testing.assert_array_equal(first, again)
        stats = {m["version"]: m for m in admin.stats("full")["model_stats"]}
        assert stats["3"]["inference_stats"]["cache_hit"]["count"] == 2
        client.close()
