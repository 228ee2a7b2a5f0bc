"""The finetune stage: DIR/preprocess/traces + DIR/vqvae/codebook.npy + DIR/assign -> DIR/finetune.

Order of work (each training step is one Ray Train run, see simpersona.persona.finetune):
  base       load the base LM (or, for `small`, train its tokenizer and pre-train it from scratch
             on the no-persona examples)
  tokens     add K persona tokens, rows initialised from the codebook, self-check
  stage1     persona rows only                      -> DIR/checkpoints/finetune/work/stage1
  stage2     LoRA + persona rows (or full)          -> DIR/finetune/model
  baselines  the same stage-2 recipe from the base on as many examples without persona (`none`)
             and with the prose persona (`prompt`) -> DIR/finetune/baselines/<name>; their examples are
             the persona stages' own unless persona.train_sampling=types, which draws those per type
  evaluate   held-out accuracy / NLL / per-type JS, rollout conversion per type vs real
Artifacts: model/ (save_pretrained + tokenizer + persona.json), persona.json, summary.json; the
baselines beside them. Histories at eval.holdout's held-out storefronts are never trained on.
Intermediate models and Ray Train checkpoints: DIR/checkpoints/finetune/{work,ray}.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from simpersona import storage
from simpersona.data.storefront import replayed_store
from simpersona.persona import examples as ex
from simpersona.persona.evaluate import score_steps, step_metrics, type_sensitivity
from simpersona.persona.finetune import (
    StageSpec,
    data_fingerprint,
    folder_fingerprint,
    run_stage,
    steps_per_epoch,
)
from simpersona.persona.model_loading import SMALL, load_pretrained, load_saved, resolve_name, save
from simpersona.persona.prompts import persona_token
from simpersona.persona.scoring import PERSONA_FILE, ActionScorer
from simpersona.persona.tokens import add_persona_tokens, description_anchors


class Timer:
    def __init__(self):
        self.wall: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.wall[name] = round(time.perf_counter() - t0, 2)


def inputs(run_dir: Path) -> dict[str, Path]:
    return {"traces": run_dir / "preprocess" / "traces", "types": run_dir / "assign" / "types.parquet",
            "profiles": run_dir / "assign" / "type_profiles.json", "codebook": run_dir / "vqvae" / "codebook.npy"}


def heldout_merchants(cfg) -> list[str]:
    """The evaluation's held-out storefronts (eval.holdout), as the VQ training excludes them; none when
    the run has neither real events nor features to derive them from (planted persona-only runs)."""
    run_dir = Path(cfg.run_dir)
    if not (cfg.eval.real_events or (run_dir / "preprocess" / "events").is_dir()
            or (run_dir / "preprocess" / "features").is_dir()):
        return []
    from simpersona.vq.dataset import heldout_merchants as vq_heldout

    return vq_heldout(cfg)


def dataset(df: pd.DataFrame, batch_size: int, seed: int):
    import ray.data

    return ray.data.from_pandas(ex.bucket_by_length(df, batch_size, seed))


def run(cfg) -> dict:
    pc = cfg.persona
    run_dir = Path(cfg.run_dir).absolute()  # Ray Train workers run in their own working folder
    out = run_dir / "finetune"
    # intermediate models and Ray Train checkpoints live outside DIR/finetune, which the pipeline clears
    # before re-running an unfinished stage: an interrupted job resumes from them
    work = run_dir / "checkpoints" / "finetune" / "work"
    paths = inputs(run_dir)
    if not paths["codebook"].exists():
        raise FileNotFoundError(f"no codebook at {paths['codebook']} (run the vqvae stage first)")
    timer = Timer()
    t_total = time.perf_counter()
    codebook = np.load(paths["codebook"])
    n_types = int(codebook.shape[0])
    seed = int(cfg.seed)
    train_cfg = OmegaConf.to_object(pc.train)
    with timer("load_data"):
        excluded = heldout_merchants(cfg) if pc.exclude_heldout else []
        steps = ex.load_steps(paths["traces"], paths["types"], paths["profiles"], n_types, pc.history_len,
                              pc.heldout_fraction, seed, excluded)
        train_df = ex.subsample(steps.train, pc.max_train_examples, seed)  # the base's and baselines' examples
        persona_df = ex.sample_training_steps(steps.train, pc.max_train_examples, pc.train_sampling, seed)
        eval_df = ex.subsample(steps.heldout, pc.eval.max_steps, seed)
    if train_df.empty or eval_df.empty:
        raise ValueError(f"too few trace histories: {len(train_df)} training and {len(eval_df)} held-out steps")
    bad = [b for b in pc.baselines if b not in ("none", "prompt")]
    if bad:
        raise ValueError(f"persona.baselines may hold none and prompt, got {bad}")
    described = bool(steps.descriptions) and all(steps.descriptions)
    baselines = [b for b in pc.baselines if b != "prompt" or described]
    skipped = [b for b in pc.baselines if b not in baselines]  # prompt without type descriptions

    def spec(name, input_dir, output_dir, mode, stage_cfg, data, persona_ids=()):
        return StageSpec(
            name=name, input_dir=str(input_dir), output_dir=str(output_dir), mode=mode,
            persona_ids=list(persona_ids), epochs=int(stage_cfg.epochs), lr=float(stage_cfg.lr),
            batch_size=int(stage_cfg.batch_size), warmup_steps=int(stage_cfg.warmup_steps),
            max_steps=int(stage_cfg.max_steps),
            steps_per_epoch=steps_per_epoch(len(data), int(stage_cfg.batch_size), int(pc.train.workers)),
            lora=OmegaConf.to_object(pc.lora), train=train_cfg, seed=seed,
            progress=bool(cfg.progress),
            data_fingerprint=data_fingerprint(data), input_fingerprint=folder_fingerprint(input_dir))

    checkpoints = storage.join_uri(cfg.get("checkpoint_root") or cfg.storage_path or cfg.run_dir, "checkpoints", "finetune", "ray")
    metrics: dict[str, dict] = {}
    dropped: dict[str, int] = {}
    base_name = resolve_name(pc.model.name_or_path)

    def tokenized(tokenizer, variant: str, dropout: float = 0.0) -> pd.DataFrame:
        rows = persona_df if variant == "persona" else train_df
        prompts = ex.prompts_for(rows, variant, n_types, steps.descriptions, dropout, seed)
        df, dropped[variant] = ex.tokenize(tokenizer, prompts, rows["action"].tolist(), pc.max_prompt_tokens)
        if df.empty:
            raise ValueError(f"every {variant} example is longer than persona.max_prompt_tokens={pc.max_prompt_tokens}")
        return df

    # ---- base model ---------------------------------------------------------------------------
    base_dir = work / "base"
    with timer("base"):
        if base_name == SMALL:
            from simpersona.persona import small

            init_dir = work / "small_init"
            texts = ex.prompts_for(ex.subsample(train_df, pc.model.small.tokenizer_examples, seed), "none",
                                   n_types, None)
            texts += [d for d in steps.descriptions or [] if d]
            tokenizer = small.train_tokenizer(texts + train_df["action"].tolist(), pc.model.small.vocab_size)
            save(small.build_model(tokenizer, pc.model.small, seed), tokenizer, init_dir)
            usable = [v for v in pc.model.small.pretrain_variants if v == "none" or (v == "prompt" and described)]
            if not usable:
                raise ValueError("persona.model.small.pretrain_variants needs none (or prompt with type descriptions)")
            data = pd.concat([tokenized(tokenizer, v) for v in usable], ignore_index=True)
            pre = pc.model.small.pretrain
            metrics["pretrain"] = run_stage(spec("pretrain", init_dir, base_dir, "full", pre, data),
                                            dataset(data, pre.batch_size, seed), checkpoints, pc.train.resume, cfg.data.s3)
        else:
            source = {"name_or_path": pc.model.name_or_path, "gguf_file": pc.model.gguf_file,
                      "revision": pc.model.revision}
            marker = base_dir / "base.json"
            if not (pc.train.resume and marker.exists() and json.loads(marker.read_text()) == source):
                model, tokenizer = load_pretrained(pc.model.name_or_path, pc.model.gguf_file, pc.model.revision,
                                                   pc.model.trust_remote_code)
                save(model, tokenizer, base_dir)
                marker.write_text(json.dumps(source))  # last: a half-written base is never reused
    base_model, base_tok = load_saved(base_dir)

    # ---- persona tokens -----------------------------------------------------------------------
    persona_dir = work / "persona_base"
    with timer("tokens"):
        anchors = None
        if pc.init == "codebook_lstsq" and steps.descriptions and all(steps.descriptions):
            anchors = description_anchors(base_model, base_tok, steps.descriptions)
        ids = add_persona_tokens(base_model, base_tok, n_types, codebook, pc.init, anchors)
        save(base_model, base_tok, persona_dir)
    del base_model

    # ---- stage 1, stage 2, baselines ------------------------------------------------------------
    persona_data = tokenized(base_tok, "persona")
    final_dir = out / "model"
    with timer("stage1"):
        s1 = spec("stage1", persona_dir, work / "stage1", "persona_rows", pc.stage1, persona_data, ids)
        metrics["stage1"] = run_stage(s1, dataset(persona_data, pc.stage1.batch_size, seed), checkpoints, pc.train.resume, cfg.data.s3)
    mode2 = {"lora": "lora_persona", "full": "full"}.get(pc.stage2_mode)
    if mode2 is None:
        raise ValueError(f"persona.stage2_mode must be lora or full, got {pc.stage2_mode!r}")
    with timer("stage2"):
        stage2_data = tokenized(base_tok, "persona", pc.persona_dropout) if pc.persona_dropout else persona_data
        s2 = spec("stage2", work / "stage1", final_dir, mode2, pc.stage2, stage2_data, ids)
        metrics["stage2"] = run_stage(s2, dataset(stage2_data, pc.stage2.batch_size, seed), checkpoints, pc.train.resume, cfg.data.s3)
    baseline_dirs = {}
    _, plain_tok = load_saved(base_dir)
    for b in baselines:
        with timer(f"baseline_{b}"):
            data = tokenized(plain_tok, b)
            mode = "lora" if pc.stage2_mode == "lora" else "full"
            bdir = out / "baselines" / b
            metrics[f"baseline_{b}"] = run_stage(spec(f"baseline_{b}", base_dir, bdir, mode, pc.stage2, data),
                                                 dataset(data, pc.stage2.batch_size, seed), checkpoints, pc.train.resume, cfg.data.s3)
            baseline_dirs[b] = bdir

    persona_info = {
        "persona_tokens": [persona_token(k) for k in range(n_types)], "persona_token_ids": ids,
        "codebook_size": n_types, "base_model": base_name, "history_len": int(pc.history_len),
        "init": pc.init, "stage2_mode": pc.stage2_mode,
        "baselines": {b: str(Path("baselines") / b) for b in baseline_dirs},
    }
    (out / PERSONA_FILE).write_text(json.dumps(persona_info, indent=1))
    (final_dir / PERSONA_FILE).write_text(json.dumps(persona_info, indent=1))
    for b, bdir in baseline_dirs.items():
        (bdir / PERSONA_FILE).write_text(json.dumps(dict(persona_info, persona_tokens=[], persona_token_ids=[],
                                                         codebook_size=0, baseline=b), indent=1))

    # ---- evaluation ---------------------------------------------------------------------------
    ev = pc.eval
    with timer("evaluate"):
        scorer = ActionScorer(final_dir)
        held: dict[str, dict] = {}
        held["persona"] = step_metrics(eval_df, score_steps(scorer, eval_df, "persona", n_types, steps.descriptions,
                                                            ev.batch_requests, cfg.progress), ev.min_type_steps)
        held["mismatch"] = step_metrics(eval_df, score_steps(scorer, eval_df, "mismatch", n_types, None,
                                                             ev.batch_requests, cfg.progress), ev.min_type_steps)
        for b, bdir in baseline_dirs.items():
            bscorer = ActionScorer(bdir)
            held[b] = step_metrics(eval_df, score_steps(bscorer, eval_df, b, n_types, steps.descriptions,
                                                        ev.batch_requests, cfg.progress), ev.min_type_steps)
        if "none" not in held:  # no baseline trained: the persona model without its token
            held["none"] = step_metrics(eval_df, score_steps(scorer, eval_df, "none", n_types, None,
                                                             ev.batch_requests, cfg.progress), ev.min_type_steps)
        all_steps = pd.concat([steps.train, steps.heldout], ignore_index=True)
        store = replayed_store(cfg)  # the storefront the traces were replayed on: same catalogs and knobs
        sens = type_sensitivity(scorer, steps.heldout, all_steps, n_types, store,
                                ev.rollouts_per_type, ev.rollout_max_steps or int(cfg.traces.max_steps_per_session), pc.temperature, seed, cfg.progress)
        sens_mismatch = type_sensitivity(scorer, steps.heldout, all_steps, n_types, store,
                                         ev.rollouts_per_type, ev.rollout_max_steps or int(cfg.traces.max_steps_per_session),
                                         pc.temperature, seed, cfg.progress, shift=max(1, n_types // 2))

    summary = {
        "base_model": base_name if base_name != SMALL else "small",
        "base_model_source": pc.model.name_or_path,
        "persona_tokens": persona_info["persona_tokens"],
        "persona_token_ids": ids,
        "codebook_size": n_types,
        "init": pc.init,
        "stage2_mode": pc.stage2_mode,
        "pretrain_loss": metrics.get("pretrain", {}).get("loss"),
        "stage1_loss": metrics["stage1"].get("loss"),
        "stage2_loss": metrics["stage2"].get("loss"),
        "baseline_loss": {b: metrics[f"baseline_{b}"].get("loss") for b in baseline_dirs},
        "skipped_baselines": skipped,
        "heldout_acc_persona": held["persona"]["acc"],
        "heldout_acc_no_persona": held["none"]["acc"],
        "heldout_acc_prompt_persona": held.get("prompt", {}).get("acc"),
        "heldout_acc_mismatch": held["mismatch"]["acc"],
        "heldout_acc_by_page": {v: held[v]["acc_by_page"] for v in held},
        "page_js": {v: held[v]["js_per_page"] for v in held},  # action-verb calibration per page kind
        "heldout_nll_persona": held["persona"]["nll"],
        "heldout_nll_no_persona": held["none"]["nll"],
        "heldout_nll_prompt_persona": held.get("prompt", {}).get("nll"),
        "heldout_nll_mismatch": held["mismatch"]["nll"],
        "no_persona_model": "baselines/none" if "none" in baseline_dirs else "model without persona token",
        "type_js_persona": held["persona"]["js_per_type"],
        "type_js_no_persona": held["none"]["js_per_type"],
        "mean_js_persona": held["persona"]["js_mean"],
        "mean_js_no_persona": held["none"]["js_mean"],
        "type_conversion_model": dict(zip(sens["types"], sens["model"])),
        "type_conversion_real": dict(zip(sens["types"], sens["real"])),
        "type_conversion_spearman": sens["spearman"],
        # a policy converting exactly at each type's real rate, with as many rollouts per type
        "type_conversion_spearman_ideal": sens["ideal"],
        # the same rollouts with each type's sessions under another type's token: the peer that must lose
        "type_conversion_model_mismatch": dict(zip(sens_mismatch["types"], sens_mismatch["model"])),
        "type_conversion_spearman_mismatch": sens_mismatch["spearman"],
        "n_train_examples": len(train_df), "n_heldout_steps": len(eval_df),
        "train_sampling": pc.train_sampling,
        "persona_examples_per_type": {int(k): int(v) for k, v in persona_df["type_id"].value_counts().sort_index().items()},
        "n_train_histories": int(train_df["history_id"].nunique()),
        "untyped_trace_rows": steps.untyped_rows, "dropped_long_examples": dropped,
        "heldout_merchants_excluded_from_training": len(excluded),
        "tokens_per_s": {k: v.get("tokens_per_s") for k, v in metrics.items()},
        "stages": {k: {kk: v.get(kk) for kk in ("loss", "step", "epochs", "tokens_per_s", "peak_memory_mib",
                                                 "train_wall_s", "wall_s", "world_size", "reused")}
                   for k, v in metrics.items()},
        "ray_train_workers": int(pc.train.workers),
        "wall_s": dict(timer.wall, total=round(time.perf_counter() - t_total, 2)),
        "config": OmegaConf.to_container(pc, resolve=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    return summary


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x)

