"""Build every example artifact into one directory (``examples/artifacts`` by default) plus a ``metrics.json``.

The artifacts are committed so that serving the examples never needs training (or any download); this module is how
they were made and how to remake them. Training is seeded and the writers avoid timestamps, so a rebuild gives the
same predictions and, with the library versions pinned in the venv, the same bytes. Run: ``make examples`` (which
also regenerates model_repository/) or ``python -m examples.build [OUT_DIR]`` from the checkout's root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from examples.digits import build_digits
from examples.housing import build_housing
from toolkit.errors import TritonctlError

DEFAULT_OUT = Path("examples/artifacts")
MAX_TOTAL_BYTES = 1_000_000


class ExampleBuildError(TritonctlError):
    """The example artifacts could not be built within their promised limits."""


def _size_files(paths: dict[str, Path]) -> list[Path]:
    """Every file an artifact consists of (the numpy model is a .py plus its sibling .npz)."""
    files: list[Path] = []
    for path in paths.values():
        files.append(path)
        sibling = path.with_suffix(".npz")
        if path.suffix == ".py" and sibling.exists():
            files.append(sibling)
    return files


def build_all(out_dir: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Build the 3 digits models, the housing preprocessor, the 4 city models and the ONNX twins of the preprocessor
    and the Chicago model (``housing_preprocess_onnx``, ``housing_Chicago_IL_onnx``); return ``{model_name: path}``.

    ``metrics.json`` records held-out accuracy (digits), R^2 (housing) and the size of every file, so a reviewer can see
    what a rebuild changed without running the models.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digit_paths, accuracies = build_digits(out_dir)
    housing_paths, r2 = build_housing(out_dir)
    paths = {**digit_paths, **housing_paths}
    files = _size_files(paths)
    sizes = {f.name: f.stat().st_size for f in sorted(files)}
    metrics = {
        "digits_accuracy": {k: round(v, 6) for k, v in sorted(accuracies.items())},
        "housing_r2": {k: round(v, 6) for k, v in sorted(r2.items())},
        "sizes_bytes": sizes,
        "total_bytes": sum(sizes.values()),
    }
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    total = metrics["total_bytes"] + metrics_path.stat().st_size
    if total > MAX_TOTAL_BYTES:
        raise ExampleBuildError(f"example artifacts take {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")
    paths["metrics"] = metrics_path
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build into ``argv[0]`` (default ``examples/artifacts``) and print what was written."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    try:
        paths = build_all(out)
    except TritonctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
