"""Simulation folders used by evaluation and what-if runs: run them safely, read them back.

The simulate stage resumes a folder by skipping agents already committed there. That is right after
a crash, and wrong after the model, the storefront or the population changed: the folder would mix
agents of two setups. `simulate_run` therefore records what a folder was made from
(eval_inputs.json: the sim/serve/store/browser config, the seed, the type distribution file, the
upstream stages' digests) and starts the folder afresh when that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

from simpersona import manifest
from simpersona.eval.artifacts import ArtifactError, json_safe, read_events, read_parquet_folder
from simpersona.storage import write_json

log = logging.getLogger(__name__)
MARKER = "eval_inputs.json"


def _digest(stage_dir: Path) -> str:
    try:
        return manifest.digest(stage_dir)
    except FileNotFoundError:
        return ""  # an upstream stage run outside the pipeline: its config sections still count


def sim_fingerprint(vcfg, types_path: Path | None) -> dict:
    """What a simulation folder's contents depend on."""
    run_dir = Path(vcfg.run_dir)
    sections = {k: OmegaConf.to_container(vcfg[k], resolve=True) for k in ("sim", "serve", "store", "browser")
                if k in vcfg}
    return {
        # the real values: redaction is by key name and inside URLs, so a changed `*token*` setting or a
        # base URL's credentials would otherwise leave a stale folder looking current (only the hash is kept)
        "config": manifest.stable_hash(sections),
        "seed": vcfg.seed,
        "merchant_types": hashlib.sha256(types_path.read_bytes()).hexdigest()[:16] if types_path else "",
        "upstream": {s: _digest(run_dir / s) for s in ("assign", "finetune")},
    }


def simulate_run(vcfg, types_path: Path | None, simulate) -> Path:
    """Run (or resume) one evaluation simulation; a folder made from other inputs is replaced."""
    from simpersona.sim.simulate import variant_dir

    folder = variant_dir(vcfg)
    marker = folder / MARKER
    fp = sim_fingerprint(vcfg, types_path)
    if folder.exists() and (not marker.exists() or json.loads(marker.read_text()) != fp):
        log.warning("%s was simulated from other inputs: starting it afresh", folder)
        shutil.rmtree(folder)
    write_json(marker, json_safe(fp))
    simulate(vcfg)
    return folder


class SimRun:
    """The artifacts of one simulation folder: agents, storefront events, results (of `merchants` only
    when given)."""

    def __init__(self, folder: Path, merchants: list[str] | None = None):
        self.folder = folder
        agents = read_parquet_folder(folder / "agents.parquet", "agent specs")
        self.agents = agents if merchants is None else agents.filter(pl.col("merchant_id").is_in(merchants))
        if self.agents.height == 0:
            raise ArtifactError(f"{folder}/agents.parquet has no agents at the merchants asked for")
        ids = self.agents.select("agent_id")
        self.events = read_events(folder / "events").join(ids, left_on="buyer_id", right_on="agent_id", how="semi")
        results = read_parquet_folder(folder / "results", "agent results")
        self.results = results.join(ids, on="agent_id", how="semi")
        self.persona_mode = str(self.agents["persona_mode"][0]) if "persona_mode" in self.agents.columns else ""

    def trajectories(self) -> pl.DataFrame | None:
        """agent_id, observation, action of every committed step (None when the folder has none)."""
        folder = self.folder / "trajectories"
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return None
        steps = pl.scan_parquet(folder / "*.parquet").select("agent_id", "observation", "action")
        return steps.join(self.results.select("agent_id").lazy(), on="agent_id", how="semi").collect()

    def step_errors(self) -> pl.DataFrame:
        """agent_id, error of every committed step that an error or a failure ended."""
        folder = self.folder / "trajectories"
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return pl.DataFrame(schema={"agent_id": pl.Utf8, "error": pl.Utf8})
        steps = pl.scan_parquet(folder / "*.parquet").select("agent_id", "error").filter(pl.col("error") != "")
        return steps.join(self.results.select("agent_id").lazy(), on="agent_id", how="semi").collect()
