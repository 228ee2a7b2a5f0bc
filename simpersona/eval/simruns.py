"""Reading a simulation folder back: its agents, storefront events, results and trajectories.

The folders themselves are made by simpersona.sim.experiments (evaluation and what-if populations).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from simpersona.eval.artifacts import ArtifactError, read_events, read_parquet_folder


def heldout_variant(cfg, name: str) -> str:
    """The simulation variant of the evaluation's persona mode (or baseline folder) `name`."""
    return f"{cfg.eval.run_prefix}{name}"


def heldout_folder(cfg, name: str) -> Path:
    """<run_dir>/simulate/<eval.run_prefix><name>: where the evaluation's simulation of `name` lives."""
    return Path(cfg.run_dir) / "simulate" / heldout_variant(cfg, name)


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
