"""Config section of the Ray Serve policy (serve).

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass


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
