"""Ensemble patterns (serial pipeline, scatter-gather, aggregate, dynamic selection, A/B) generated from short specs.

``build_ensembles`` is what ``tritonctl generate`` calls; ``check_ensemble_configs`` is what ``tritonctl validate``
calls on a repository's parsed configs.
"""

from toolkit.ensembles.build import EnsembleError, build_ensembles
from toolkit.ensembles.dag import Finding, check_ensemble_configs

__all__ = ["EnsembleError", "Finding", "build_ensembles", "check_ensemble_configs"]
