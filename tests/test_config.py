"""Configuration layering that decides how jobs behave when run on their own."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from simpersona.config import load

SIM_SECTIONS = ("sim", "serve", "store", "browser")


@pytest.mark.parametrize("named", [[], ["config=demo"], ["config=smoke"]])
@pytest.mark.parametrize("job", ["evaluate", "whatif"])
def test_simulating_jobs_alone_simulate_as_inside_the_pipeline(job, named):
    """Run alone, evaluate.py and whatif.py read simulate.yaml too: the same Chromium flags (its
    --disable-features list), Serve and storefront settings as the pipeline, so a stage job re-run after
    a pipeline run finds the simulation folders' fingerprints unchanged instead of starting them afresh."""
    alone = OmegaConf.to_container(load(job, [*named, "run_dir=/r"]), resolve=True)
    piped = OmegaConf.to_container(load("pipeline", [*named, "run_dir=/r"]), resolve=True)
    for section in SIM_SECTIONS:
        assert alone[section] == piped[section], section
    assert any(a.startswith("--disable-features=") and "WebUIOmniboxPopup" in a for a in alone["browser"]["args"])
    assert alone["serve"]["http"] is False
