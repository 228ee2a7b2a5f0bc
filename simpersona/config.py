"""Configuration: OmegaConf YAML merged onto dataclass schemas.

`load(job, argv)` merges, in order: the schema defaults ← configs/base.yaml ← configs/<job>.yaml ←
configs/<NAME>.yaml for `config=NAME` ← the remaining `key=value` arguments. Unknown keys are errors
(the schema is structured), so a typo in an override fails loudly instead of being ignored.

Each stage owns one section dataclass below; add fields there, with defaults, and mirror them in the
stage's YAML so a user sees every knob in `configs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class S3Config:
    """Endpoint and credentials for s3:// URIs; empty values fall back to the AWS environment."""

    endpoint_url: str = ""
    region: str = ""
    access_key: str = ""
    secret_key: str = ""
    session_token: str = ""
    allow_http: bool = False


@dataclass
class DataConfig:
    # adapter: tmall2014 | rees46 | retailrocket | generic | canonical
    adapter: str = "tmall2014"
    # file, folder, glob or s3:// URI; CSV or Parquet (format from suffix unless `format` is set)
    input: str = "data/tmall2014/t_alibaba_data.csv"
    format: str = "auto"  # auto | csv | parquet
    csv_delimiter: str = ","
    max_bad_fraction: float = 0.01
    # generic adapter: canonical column -> source column, and source event value -> canonical event
    columns: dict[str, str] = field(default_factory=dict)
    event_values: dict[str, str] = field(default_factory=dict)
    ts_format: str = ""  # strptime format for the generic adapter; "" = ISO 8601 / epoch seconds
    ts_unit: str = ""  # s | ms when the time column is an epoch number
    year: int = 2014  # Tmall's M-D dates carry no year
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class SessionConfig:
    gap_minutes: float = 30.0  # inactivity gap that starts a new session
    # day-resolution sources (Tmall): one buyer x merchant x day is a session
    day_resolution: bool = False
    unit: str = "buyer_merchant"  # buyer_merchant | buyer (whole-buyer histories)


@dataclass
class FeatureConfig:
    seq_len: int = 32  # last L event tokens per history
    price_buckets: int = 5
    gap_buckets: int = 5


@dataclass
class TraceConfig:
    max_sessions_per_history: int = 8
    max_steps_per_session: int = 40


@dataclass
class StoreConfig:
    """Storefront model: catalog generation and what-if knobs (one variant)."""

    products_per_merchant: int = 24
    page_size: int = 6
    related_products: int = 3
    recommendations: bool = True
    price_multiplier: float = 1.0
    shipping_fee: float = 8.0
    free_shipping_threshold: float = 99.0
    checkout_steps: int = 2
    discount_banner: str = ""
    catalog_seed: int = 7
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port


@dataclass
class SynthConfig:
    """Synthetic clickstream with planted buyer types (simpersona.data.synthetic)."""

    buyers: int = 20000
    merchants: int = 60
    types: int = 8  # the first N types of the built-in library (at most 8)
    shard_buyers: int = 50000  # buyers per output shard; one shard is the unit of memory and work
    seed: int = 0
    out: str = ""  # "" = <storage_path>/synthetic
    # type name -> population share; unnamed types keep their library share, then all are renormalised
    type_shares: dict[str, float] = field(default_factory=dict)
    mixture_concentration: float = 6.0  # Dirichlet concentration of merchant type mixtures (lower = more diverse)
    merchant_popularity_exponent: float = 0.8  # Zipf exponent of how often buyers pick each merchant
    extra_merchants_mean: float = 0.8  # merchants per buyer = 1 + Poisson(mean), capped
    max_merchants_per_buyer: int = 4
    products_min: int = 20  # catalog size per merchant, uniform in [min, max]
    products_max: int = 120
    categories: int = 40  # global category pool
    categories_per_merchant: int = 6
    price_median: float = 60.0  # median merchant price level
    price_level_sigma: float = 0.8  # log-sd of merchant price levels
    product_price_sigma: float = 0.6  # log-sd of product prices around their merchant's level
    start_date: str = "2014-04-15"  # first day of the simulated period (Tmall: 04-15 .. 08-15)
    span_days: int = 120
    max_events_per_session: int = 30
    max_event_gap_s: float = 1200.0  # below sessions.gap_minutes so that sessionisation recovers sessions
    min_session_gap_s: float = 3600.0  # above sessions.gap_minutes, for the same reason
    max_session_gap_days: float = 30.0
    executor: str = "auto"  # auto | process | ray | serial (auto = ray when ray is initialised)
    workers: int = 0  # process pool size; 0 = all cores
    compression: str = "snappy"


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
    seed: int = 0
    config: str = ""  # name of the YAML in configs/ merged over the stage defaults
    progress: bool = True
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    traces: TraceConfig = field(default_factory=TraceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    # later stages keep their sections free-form until their schemas land
    vq: dict[str, Any] = field(default_factory=dict)
    persona: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    whatif: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


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
        out.append(f"{key}={value}")
    return out


def load(job: str, argv: list[str] | None = None, aliases: dict[str, str] | None = None) -> DictConfig:
    """Resolved config for `job`: schema ← base.yaml ← <job>.yaml ← config=NAME ← overrides."""
    overrides = parse_overrides(list(argv or []), aliases)
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("config=")]
    cfg = OmegaConf.structured(Config)
    layers = [_yaml("base"), _yaml(job)]
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


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
