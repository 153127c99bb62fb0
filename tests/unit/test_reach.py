"""What a model may call, read from configs: ensemble steps and every target of a generated router, transitively."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from toolkit.ensembles.reach import ReachMap

REPO = Path(__file__).resolve().parents[2] / "model_repository"  # the committed example output of `generate`
CITIES = ["housing_Chicago_IL", "housing_Houston_TX", "housing_LosAngeles_CA", "housing_NewYork_NY"]


def test_routers_reach_every_target_and_ensembles_their_steps_transitively() -> None:
    r = ReachMap(REPO)
    assert r.reached("housing_by_city") == CITIES
    assert r.reached("housing_ab") == ["housing_Chicago_IL", "housing_Houston_TX"]
    assert set(r.reached("housing_rules")) >= {"housing_NewYork_NY", "housing_LosAngeles_CA"}
    pipeline = r.reached("housing_city_pipeline")  # an ensemble whose middle step is a router
    assert set(pipeline) == {"housing_preprocess", "housing_by_city_field", "housing_postprocess", *CITIES}
    assert r.reached("housing_Chicago_IL") == [] and r.reached("no_such_model") == []


def test_a_changed_config_is_read_again_and_cycles_end(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "housing_ab", repo / "housing_ab")
    r = ReachMap(repo)
    assert r.reached("housing_ab") == ["housing_Chicago_IL", "housing_Houston_TX"]
    cfg = repo / "housing_ab" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("housing_Chicago_IL", "housing_ab"))  # now it names itself
    st = cfg.stat()
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert r.reached("housing_ab") == ["housing_Houston_TX"]
