"""Configuration: OmegaConf YAML merged onto dataclass schemas.

`load(job, argv)` merges, in order: the schema defaults ← configs/base.yaml ← configs/<job>.yaml ←
configs/<NAME>.yaml for `config=NAME` ← the remaining `key=value` arguments. Unknown keys are errors
(the schema is structured), so a typo in an override fails loudly instead of being ignored.

Each stage's section is a dataclass in that stage's package (simpersona/<package>/config.py: data,
store, sim, serve, eval, report, vq, persona; the shop knobs in simpersona/pages/config.py); `Config`
below composes them with the run-wide settings. A default lives in its dataclass only: configs/*.yaml
hold what a job or a named config changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from simpersona.data.config import DataConfig, FeatureConfig, SessionConfig, SynthConfig, TraceConfig
from simpersona.errors import ConfigError  # noqa: F401  (raised by load; stages import it from errors)
from simpersona.eval.config import EvalConfig, WhatifConfig
from simpersona.persona.config import PersonaConfig
from simpersona.report.config import ReportConfig
from simpersona.serve.config import ServeConfig
from simpersona.sim.config import BrowserConfig, SimConfig
from simpersona.store.config import StoreConfig
from simpersona.vq.config import VQConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RayConfig:
    address: str = ""  # "" = RAY_ADDRESS or a local Ray
    num_cpus: int = 0  # 0 = let Ray decide (local only)
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = False


@dataclass
class Config:
    run_dir: str = "runs/default"
    storage_path: str = ""  # "" = run_dir; s3://bucket/prefix or a local folder
    # local working mirror of an s3:// storage root (stages run there, then upload); "" = <system temp>/simpersona
    cache_dir: str = ""
    # where Ray Train keeps its checkpoints ("" = storage_path); the stage runner points it at the remote
    # root when a stage runs on the local mirror, so a killed training resumes from any machine
    checkpoint_root: str = ""
    seed: int = 0
    config: str = ""  # name of the YAML in configs/ merged over the stage defaults
    progress: bool = True
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    traces: TraceConfig = field(default_factory=TraceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    whatif: WhatifConfig = field(default_factory=WhatifConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    pipeline: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)


def _yaml(name: str) -> DictConfig | None:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors: name the file
        raise ConfigError(f"cannot parse {path}: {exc}") from exc


def parse_overrides(argv: list[str], aliases: dict[str, str] | None = None) -> list[str]:
    """Check `key=value` arguments; rewrite short aliases (e.g. `workers=` → `sim.workers=`)."""
    out = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        key = (aliases or {}).get(key, key)
        if value.startswith("%"):  # YAML reads a leading % as a directive and fails with a scanner error
            raise ConfigError(f"{key}={value}: a value starting with '%' must be quoted for YAML, "
                              f"e.g. {key}='\"{value}\"' (the outer quotes are for the shell)")
        out.append(f"{key}={value}")
    return out


# jobs that run simulations read the simulate job's YAML first (browser flags, Serve and storefront
# settings), so that run alone they simulate exactly as inside the pipeline
SIMULATING_JOBS = {"evaluate": ("simulate", "evaluate"), "whatif": ("simulate", "whatif")}
PIPELINE_JOBS = ("preprocess", "vqvae", "assign", "finetune", "simulate", "evaluate", "whatif",
                 "pipeline")


def load(job: str, argv: list[str] | None = None, aliases: dict[str, str] | None = None) -> DictConfig:
    """Resolved config for `job`: schema ← base.yaml ← <job>.yaml ← config=NAME ← overrides.

    The `pipeline` job merges every stage's YAML in pipeline order, so each stage sees its defaults.
    """
    overrides = parse_overrides(list(argv or []), aliases)
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("config=")]
    cfg = OmegaConf.structured(Config)
    jobs = PIPELINE_JOBS if job == "pipeline" else SIMULATING_JOBS.get(job, (job,))
    layers = [_yaml("base")] + [_yaml(j) for j in jobs]
    for name in named:
        layer = _yaml(name)
        if layer is None:
            raise ConfigError(f"config={name}: no file {CONFIG_DIR / (name + '.yaml')}")
        layers.append(layer)
    try:
        for layer in layers:
            if layer is not None:
                cfg = OmegaConf.merge(cfg, layer)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as exc:  # omegaconf's messages name the key; keep them, drop the traceback
        raise ConfigError(f"bad configuration for job {job!r}: {exc}") from None
    if not cfg.storage_path:
        cfg.storage_path = cfg.run_dir
    OmegaConf.resolve(cfg)
    return cfg
