"""Config sections of the data stages: input and its storage (data, data.s3), sessions, features, agent
traces, the synthetic generator.

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field

from simpersona.storage_config import S3Config


@dataclass
class DataConfig:
    # adapter: tmall2014 | rees46 | retailrocket | generic | canonical | ga4 | segment
    adapter: str = "tmall2014"
    # file, folder, glob or s3:// URI; CSV, Parquet or JSON lines (format from suffix unless `format` is set)
    input: str = "data/tmall2014/t_alibaba_data.csv"
    format: str = "auto"  # auto | csv | parquet
    csv_delimiter: str = ","
    # false: the CSV files have no header line (the public Taobao UserBehavior file); csv_columns names them
    csv_header: bool = True
    csv_columns: list[str] = field(default_factory=list)
    max_bad_fraction: float = 0.01
    # generic adapter: canonical column -> source column, and source event value -> canonical event
    columns: dict[str, str] = field(default_factory=dict)
    event_values: dict[str, str] = field(default_factory=dict)
    ts_format: str = ""  # strptime format for the generic adapter; "" = ISO 8601
    ts_unit: str = ""  # s | ms | us | ns when the time column is an epoch number (wins over ts_format)
    # times outside [min_ts, max_ts] are quarantined (ts_out_of_range): epoch zeros, unit mistakes, 2100s
    min_ts: str = "1990-01-01"
    max_ts: str = ""  # "" = a day after the read (a day of clock skew on the logging servers)
    # a row identical in every source column to an earlier row of its file: quarantine (duplicate_row) |
    # keep | auto = keep for day-resolution sources (Tmall: two views of a brand on one day are two equal
    # lines), else quarantine
    duplicate_rows: str = "auto"
    year: int = 2014  # Tmall's M-D dates carry no year
    merchant_id: str = ""  # non-empty: every row belongs to this one storefront (retailrocket: "retailrocket")
    rees46_empty_brand: str = "unbranded"  # merchant for REES46 rows without a brand; "" = quarantine them
    encoding: str = "utf-8"  # text encoding of CSV input
    # CSV (and JSON lines) read granularity; pyarrow reads ~30 blocks ahead, so a reader holds ~30x this,
    # whatever the file size
    csv_block_bytes: int = 2 << 20
    parquet_batch_rows: int = 262144
    # the bad-row limit is also checked while reading, once this many rows were read (fail fast)
    bad_check_min_rows: int = 10000
    quarantine_examples: int = 3  # bad rows quoted in the error message
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class SessionConfig:
    """Sessions and histories (simpersona.data.sessions) and the history shuffle of the Ray pipeline."""

    # a gap of more than this many minutes between two events of a buyer at a merchant starts a new
    # session (exactly gap_minutes stays in the session)
    gap_minutes: float = 30.0
    # day-resolution sources (Tmall): one buyer x merchant x day is a session
    day_resolution: bool = False
    unit: str = "buyer_merchant"  # buyer_merchant | buyer (whole-buyer histories)
    # Ray pipeline: events are hash-partitioned by buyer so that whole histories meet in one block
    shuffle: str = "files"  # files (bucket files in storage) | ray (Ray Data's repartition(keys=...))
    partitions: int = 0  # number of hash partitions; 0 = input rows / rows_per_partition (at least 2 per CPU)
    rows_per_partition: int = 1_000_000
    read_tasks_per_cpu: int = 2  # files shuffle: read tasks (each writes one file per bucket)
    disk_shuffle: bool = False  # ray shuffle: Ray's disk-based hash shuffle instead of the object store
    shuffle_batch_mib: int = 64  # ray shuffle: input per map task (Ray's default, 1 GiB, serialises the map)


@dataclass
class FeatureConfig:
    """Per-history features (simpersona.data.features); the schema is documented in that module."""

    seq_len: int = 32  # last L event tokens per history
    price_buckets: int = 5  # P: buckets of log(price / merchant mean price), evenly spaced over +-span
    price_ratio_span: float = 2.0  # outermost bucket edges at mean / span and mean * span
    gap_buckets: int = 5  # G = len(gap_edges_s) + 2: bucket 1 = first event or same time
    gap_edges_s: list[float] = field(default_factory=lambda: [60.0, 3600.0, 86400.0])
    # planted types of synthetic data: "auto" = <input>/../planted when the input is a folder `events`
    # with a `planted` folder beside it; "" = none; else a Parquet file/folder (buyer_id, merchant_id,
    # planted_type)
    planted: str = "auto"


@dataclass
class TraceConfig:
    """Agent-training traces (simpersona.data.traces): real sessions replayed on the storefront model."""

    max_sessions_per_history: int = 8  # the most recent N sessions of each history; 0 = all
    max_steps_per_session: int = 40  # later events of a longer session are cut (counted); 0 = no limit
    history_fraction: float = 1.0  # share of histories with traces (chosen by a hash of history_id)


@dataclass
class SynthKnobsConfig:
    """Store knobs that differ between synthetic merchants (simpersona.data.synthetic, "Knobs").

    Each merchant draws every knob uniformly from its list (a stream of its own, so the catalogs and
    mixtures stay those of the same seed without knobs). The names are the storefront's (pages.shop.Knobs).
    """

    # false: every merchant has the storefront's default knobs and the output is byte-identical to a
    # generator without knobs
    enabled: bool = False
    price_multiplier: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1, 1.25])
    shipping_fee: list[float] = field(default_factory=lambda: [0.0, 4.0, 8.0, 12.0])
    checkout_steps: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    recommendations: list[bool] = field(default_factory=lambda: [True, False])


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
    mixture_concentration: float = 6.0  # Dirichlet concentration of merchant mixtures (lower = more diverse)
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
    knobs: SynthKnobsConfig = field(default_factory=SynthKnobsConfig)
