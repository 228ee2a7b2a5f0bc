"""Config section of the VQ-VAE and assign stages (vq): model, loss, training, k-means baseline,
evaluation, assignment.

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field


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
