"""Benchmark: how long a model's load takes (repository API call -> READY) on the embedded Triton.

Measures a minimal python model and each example model, each loaded and unloaded ``repeats`` times, and compares
``--disable-auto-complete-config`` (what tritonctl launches with) against Triton's default auto-complete in one run.
Run: ``python -m bench.server`` (part of ``make bench``); writes docs/benchmarks/foundation.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from toolkit.repository.generate import generate_repository
from toolkit.repository.samples import write_scale_model
from toolkit.server import EmbeddedTriton, ServerOptions, TritonAdmin
from toolkit.spec import load_manifest


def _time_loads(admin: TritonAdmin, name: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        admin.load(name)
        out.append(time.perf_counter() - t0)
        if not admin.model_ready(name):
            raise RuntimeError(f"{name} not READY after load")
        admin.unload(name)
        while admin.model_ready(name):
            time.sleep(0.01)
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run(repeats: int = 10, manifest: Path = Path("tritonctl.yaml")) -> list[tuple[str, str, list[float]]]:
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        spec = load_manifest(manifest)
        generate_repository(spec, repo)
        write_scale_model(repo, "minimal_python", dims=(4,), max_batch_size=8)
        names = ["minimal_python", *sorted(m.name for m in spec.models)]
        for mode, auto in (
            ("tritonctl (--disable-auto-complete-config)", False),
            ("Triton default (auto-complete)", True),
        ):
            server = EmbeddedTriton(ServerOptions(repository=repo, workdir=Path(tmp), auto_complete_config=auto))
            with server:
                admin = TritonAdmin(server.endpoint)
                for name in names if "tritonctl" in mode else ["minimal_python"]:
                    rows.append((mode, name, _time_loads(admin, name, repeats)))
    return rows


def to_markdown(rows: list[tuple[str, str, list[float]]], repeats: int) -> str:
    lines = [
        "# Foundation: model load time (repository API call -> READY)",
        "",
        "Command: `.venv/bin/python -m bench.server` (also run by `make bench`). "
        f"Each model loaded and unloaded {repeats} times on the embedded Triton 2.51, 2-core machine, one run.",
        "",
        "| launch mode | model | p50 (s) | p90 (s) | min (s) | max (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, name, vals in rows:
        lines.append(
            f"| {mode} | {name} | {statistics.median(vals):.3f} | {_pct(vals, 0.9):.3f} | {min(vals):.3f} | "
            f"{max(vals):.3f} |"
        )
    lines += [
        "",
        "Goal (issue 2): a python model's load <= 0.3 s. The sklearn-adapter models pay for importing sklearn in a",
        "fresh stub process (~0.8 s); ONNX (onnxruntime) and numpy adapters load like a plain python model, which is",
        "why the MME examples use them.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    repeats = int(args[0]) if args else 10
    rows = run(repeats)
    text = to_markdown(rows, repeats)
    print(text)
    out = Path("docs/benchmarks/foundation.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
