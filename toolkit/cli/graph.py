"""``tritonctl graph ENSEMBLE [-o out.svg|out.png|out.dot|out.mmd]``: draw an ensemble's DAG.

The CLI owner registers ``app.command("graph", help=...)(friendly(graph_cmd))``; ``graph`` is the plain function
behind it (tests and docs call it directly). The picture is built from the configs ``generate`` would write for the
manifest, so it shows the tensors Triton will actually route.
"""

from __future__ import annotations

from pathlib import Path

import typer


def graph(ensemble: str, manifest: Path, output: Path | None, allow_outside: bool = False) -> str:
    """Mermaid text when ``output`` is None, else write the file and return a line saying what was written
    (SVG/PNG need graphviz ``dot``; without it the Mermaid text is written next to the path, and the line says so).

    The builders and drawing code are imported here, not at module level: the CLI registers this command at start-up
    and ``tritonctl --help`` must not pay for them."""
    from toolkit.ensembles.draw import build_graph, render, to_mermaid
    from toolkit.repository.generate import generated_models
    from toolkit.spec import load_manifest

    m = load_manifest(manifest, allow_outside=allow_outside)
    configs = {gm.name: gm.config for gm in generated_models(m)}
    g = build_graph(ensemble, configs)
    return to_mermaid(g) if output is None else render(g, output)


def graph_cmd(
    ensemble: str = typer.Argument(..., help="ensemble (or router) name from the manifest"),
    manifest: Path = typer.Option(Path("tritonctl.yaml"), "--manifest", "-m", help="manifest file"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="out.svg / out.png (graphviz), out.dot, out.mmd; default: Mermaid on stdout"
    ),
    allow_outside: bool = typer.Option(
        False, "--allow-outside", help="let ensemble_files name files outside the manifest's directory"
    ),
) -> None:
    """Draw an ensemble: inputs, steps with the tensor on each edge, outputs, and router targets (dashed)."""
    typer.echo(graph(ensemble, manifest, output, allow_outside).rstrip("\n"))
