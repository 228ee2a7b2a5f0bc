"""Fine-tuning throughput and peak memory on this machine, printed as JSON.

    python benchmarks/finetune.py [bench.steps=30] [bench.smollm2=true] [bench.workers=[1,2]] [bench.out=FILE]

Measured through the real path (run_stage: Ray Train TorchTrainer, Ray Data shard, peft): for the
`small` model (persona.model.small dims) stage 2 (LoRA + persona rows) and full training with 1 worker
x 2 threads and with 2 workers x 1 thread (DDP over gloo), and for SmolLM2-135M stage 1 (persona rows)
and stage 2 on 1 worker. tokens_per_s counts non-padding tokens inside the training loop (Ray
start-up excluded; wall_s includes it); peak_memory_mib is the worker's max RSS (CUDA: max
allocated). With CUDA, the SmolLM2 stages also run with bf16 + DeepSpeed ZeRO-2 and the card's name
is reported. Scoring: ActionScorer requests/s, KV-cache path vs one forward per candidate.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (finetune.worker_env)

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testkit: the planted fixture

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from simpersona.config import load  # noqa: E402
from simpersona.persona import examples as ex  # noqa: E402
from simpersona.persona import small  # noqa: E402
from simpersona.persona.finetune import StageSpec, data_fingerprint, run_stage, steps_per_epoch  # noqa: E402
from simpersona.persona.model_loading import SMOLLM2, load_pretrained, save  # noqa: E402
from simpersona.persona.scoring import ActionScorer, ScoreRequest  # noqa: E402
from simpersona.persona.tokens import add_persona_tokens  # noqa: E402
from testkit.planted_persona import write_planted_run  # noqa: E402

K = 6


def stage(tmp: Path, name: str, model_dir: Path, mode: str, ids, data, pc, steps: int, batch: int, workers: int,
          cpus: float, lr: float, gpu: bool = False, deepspeed: dict | None = None) -> dict:
    train = dataclasses.replace(OmegaConf.to_object(pc.train), workers=workers, cpus_per_worker=cpus, torch_threads=0,
                                checkpoint_every=0, use_gpu=gpu, deepspeed=deepspeed or {}, resume=False)
    spec = StageSpec(name=name, input_dir=str(model_dir), output_dir=str(tmp / name), mode=mode, persona_ids=ids,
                     epochs=1, lr=lr, batch_size=batch, warmup_steps=0, max_steps=steps,
                     steps_per_epoch=steps_per_epoch(len(data), batch, workers), lora=OmegaConf.to_object(pc.lora), train=train,
                     seed=0, progress=False, data_fingerprint=data_fingerprint(data))
    m = run_stage(spec, ray.data.from_pandas(ex.bucket_by_length(data, batch, 0)), tmp / "ray", resume=False)
    return {"mode": mode, "workers": workers, "cpus_per_worker": cpus, "steps": m["step"], "batch_size": batch,
            "tokens_per_s": round(m["tokens_per_s"], 1), "peak_memory_mib": round(m["peak_memory_mib"], 1),
            "train_wall_s": round(m["train_wall_s"], 2), "wall_s": round(m["wall_s"], 2), "loss": round(m["loss"], 4)}


def scoring(model_dir: Path, steps, n: int) -> dict:
    scorer = ActionScorer(model_dir)
    df = steps.heldout.head(n)
    reqs = [ScoreRequest(int(t), o, list(h), list(a)) for t, o, h, a in zip(df.type_id, df.observation, df.history,
                                                                              df.allowed)]
    t0 = time.perf_counter()
    fast = scorer.score(reqs)
    t1 = time.perf_counter()
    slow = scorer.score_naive(reqs[: max(1, n // 4)])
    t2 = time.perf_counter()
    err = max(abs(a - b) for x, y in zip(fast, slow) for a, b in zip(x, y))
    return {"requests": n, "candidates_per_request": round(float(np.mean([len(r.allowed) for r in reqs])), 1),
            "kv_cache_requests_per_s": round(n / (t1 - t0), 2),
            "naive_requests_per_s": round(max(1, n // 4) / (t2 - t1), 2), "max_abs_logprob_diff": err}


def main(argv: list[str] | None = None) -> dict:
    cfg = load("finetune", sys.argv[1:] if argv is None else argv)
    bench = OmegaConf.to_container(cfg.bench, resolve=True) if cfg.bench else {}  # plain lists/dicts: they go into the JSON
    steps_n = int(bench.get("steps", 30))
    workers_list = [int(w) for w in bench.get("workers", [1, 2])]
    pc = cfg.persona
    gpu = torch.cuda.is_available()
    if not ray.is_initialized():
        ray.init(num_cpus=cfg.ray.num_cpus or None, include_dashboard=False,
                 log_to_driver=bool(bench.get("worker_logs", False)))
    cpu_stages = bool(bench.get("cpu_stages", True))  # false: on a GPU machine, measure only the GPU stages
    out: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                             "gpu": torch.cuda.get_device_name(0) if gpu else None},
                 # what was measured: the bench knobs and the persona config they ran under
                 "config": {"job": "finetune", "argv": list(sys.argv[1:] if argv is None else argv),
                            "bench": {"steps": steps_n, "workers": workers_list, **bench},
                            "small": OmegaConf.to_container(pc.model.small, resolve=True), "lora": OmegaConf.to_container(pc.lora, resolve=True),
                            "history_len": int(pc.history_len), "torch_threads": int(pc.train.torch_threads)}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_planted_run(tmp / "run", n_histories=int(bench.get("histories", 400)), n_types=K, seed=0)
        steps = ex.load_steps(tmp / "run/preprocess/traces", tmp / "run/assign/types.parquet",
                              tmp / "run/assign/type_profiles.json", K, pc.history_len, 0.1, 0)
        codebook = np.load(tmp / "run/vqvae/codebook.npy")

        # ---- small model (CPU) ----
        if cpu_stages:
            tok = small.train_tokenizer(ex.prompts_for(steps.train, "none", K, None), pc.model.small.vocab_size)
            model = small.build_model(tok, pc.model.small, 0)
            ids = add_persona_tokens(model, tok, K, codebook, "codebook")
            save(model, tok, tmp / "small")
            data, _ = ex.tokenize(tok, ex.prompts_for(steps.train, "persona", K, None), steps.train.action.tolist(), 480)
            runs = []
            for mode, lr in (("lora_persona", pc.stage2.lr), ("full", pc.model.small.pretrain.lr)):
                for w in workers_list:
                    cpus = max(1.0, 2.0 / w)
                    runs.append(stage(tmp, f"small_{mode}_{w}", tmp / "small", mode, ids, data, pc, steps_n, 16, w, cpus, lr))
            out["small"] = {"params": int(model.num_parameters()), "vocab": len(tok),
                            "mean_example_tokens": round(float(data.input_ids.map(len).mean()), 1), "stages": runs,
                            "scoring": scoring(tmp / f"small_lora_persona_{workers_list[0]}", steps, 64)}
            del model

        # ---- SmolLM2 ----
        if bench.get("smollm2", True):
            t0 = time.perf_counter()
            model, tok = load_pretrained(SMOLLM2)
            load_s = time.perf_counter() - t0
            ids = add_persona_tokens(model, tok, K, codebook, "codebook")
            save(model, tok, tmp / "smollm2")
            data, _ = ex.tokenize(tok, ex.prompts_for(steps.train, "persona", K, None), steps.train.action.tolist(), 480)
            n = int(bench.get("smollm2_steps", 6))
            runs = [stage(tmp, "smol_persona_rows", tmp / "smollm2", "persona_rows", ids, data, pc, n, 4, 1, 2.0, 1e-2),
                    stage(tmp, "smol_lora_persona", tmp / "smollm2", "lora_persona", ids, data, pc, n, 4, 1, 2.0, 2e-4)
                    ] if cpu_stages else []
            if gpu:  # the same stages on the GPU: bf16 autocast, then DeepSpeed ZeRO-2 + bf16
                runs.append(stage(tmp, "smol_gpu", tmp / "smollm2", "lora_persona", ids, data, pc, 50, 32, 1, 4.0,
                                  2e-4, gpu=True))
                try:
                    runs.append(stage(tmp, "smol_gpu_ds", tmp / "smollm2", "lora_persona", ids, data, pc, 50, 32, 1,
                                      4.0, 2e-4, gpu=True, deepspeed={"zero_optimization": {"stage": 2},
                                                                        "bf16": {"enabled": True}}))
                except Exception as exc:  # deepspeed missing on this image: say so in the JSON
                    runs.append({"mode": "lora_persona+deepspeed", "error": str(exc)[:300]})
            out["smollm2"] = {"params": int(model.num_parameters()), "gguf_load_s": round(load_s, 2),
                              "mean_example_tokens": round(float(data.input_ids.map(len).mean()), 1), "stages": runs,
                              "scoring": scoring(tmp / ("smol_lora_persona" if cpu_stages else "smol_gpu"), steps,
                                                 int(bench.get("smollm2_requests", 8)))}
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if bench.get("out"):
        Path(bench["out"]).write_text(text)
    return out


if __name__ == "__main__":
    main()
