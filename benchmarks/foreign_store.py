"""The same sampled population on the project storefront and on a foreign shop through its adapter.

    python benchmarks/foreign_store.py run_dir=DIR [bench.adapter=adapters/oscar.yaml] [bench.base_url=URL]
        [bench.orders_cmd="..."] [sim.merchants=4] [sim.agents_per_merchant=25] [key=value ...]

DIR holds a finished assign and finetune stage (the persona policy). With bench.base_url empty the
benchmark starts the bundled django-oscar shop (scripts/thirdparty_shop.py) in a fresh data dir and
reads its order count itself; for another shop give its base URL and, to check orders against the
shop's records, bench.orders_cmd (a shell command printing the shop's order count).

Both arms run the same agents (ids, types, seeds: simpersona.sim.population) with the same policy:
  own       on the project storefront (the world the traces were replayed on)
  foreign   on the foreign shop (sim.storefront = bench.adapter)
Prints one JSON object (also written to <run_dir>/bench/foreign_store.json):
  recognised_share      foreign steps whose page was read into a canonical page kind (target >= 0.95)
  orders                agents whose policy chose place_order, orders the shop's records gained, and their
                        ratio (target >= 0.90); the client-side purchase events beside them
  type_conversion       per type: agents and conversion (share of agents with a purchase) in each arm, and
                        the Spearman of the two over types with >= bench.min_agents agents (target >= 0.8)
  failures, blocked_requests, crash_rate, wall_s    per arm
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import OmegaConf
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpersona.config import load  # noqa: E402
from simpersona.sim.simulate import run_simulation  # noqa: E402

SHOP = ROOT / "scripts" / "thirdparty_shop.py"
DEFAULTS = {"adapter": "adapters/oscar.yaml", "base_url": "", "orders_cmd": "", "min_agents": 10,
            "start_timeout_s": 180.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_oscar(data_dir: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SHOP), "serve", "--port", str(port), "--data-dir", str(data_dir)],
                            stdout=open(data_dir / "server.log", "wb"), stderr=subprocess.STDOUT)
    url, t0 = f"http://127.0.0.1:{port}", time.monotonic()
    while True:
        try:
            urllib.request.urlopen(url + "/catalogue/", timeout=5).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
                proc.kill()
                raise RuntimeError(f"the Oscar shop did not start: see {data_dir / 'server.log'}") from None
            time.sleep(0.2)


def order_count(cmd: str) -> int | None:
    if not cmd:
        return None
    return int(subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True).stdout.strip())


def arm(cfg, variant: str, **sim) -> tuple[dict, Path]:
    c = OmegaConf.merge(cfg, {"sim": {"variant": variant, **sim}})
    summary = run_simulation(c)
    return summary, Path(c.run_dir) / "simulate" / variant


def conversion_by_type(out: Path) -> dict[int, tuple[int, float]]:
    agents = pq.read_table(out / "agents.parquet").to_pandas()
    events = pq.read_table(out / "events").to_pandas()
    bought = set(events[events.event == "purchase"].buyer_id)
    agents["converted"] = agents.agent_id.isin(bought)
    return {int(k): (int(len(g)), float(g.converted.mean())) for k, g in agents.groupby("type_id")}


def main(argv: list[str]) -> dict:
    cfg = load("simulate", argv)
    b = {**DEFAULTS, **dict(cfg.get("bench") or {})}
    proc, orders_cmd, base_url = None, str(b["orders_cmd"]), str(b["base_url"])
    tmp = tempfile.TemporaryDirectory(prefix="foreign_store_")
    if not base_url:
        data_dir = Path(tmp.name)
        proc, base_url = start_oscar(data_dir, float(b["start_timeout_s"]))
        orders_cmd = f"{sys.executable} {SHOP} orders --data-dir {data_dir}"
    try:
        own, own_dir = arm(cfg, "own_store")
        before = order_count(orders_cmd)
        foreign, foreign_dir = arm(cfg, "foreign_store", storefront=str(b["adapter"]), base_url=base_url)
        after = order_count(orders_cmd)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()
    traj = pq.read_table(foreign_dir / "trajectories").to_pandas()
    events = pq.read_table(foreign_dir / "events").to_pandas()
    chose = traj[traj.action == "place_order"].agent_id.nunique()
    placed = None if before is None else after - before
    types_own, types_foreign = conversion_by_type(own_dir), conversion_by_type(foreign_dir)
    shared = [k for k in types_own if k in types_foreign and min(types_own[k][0], types_foreign[k][0]) >= b["min_agents"]]
    rho = spearmanr([types_own[k][1] for k in shared], [types_foreign[k][1] for k in shared]).statistic \
        if len(shared) >= 3 else None
    unrecognised = int(traj.error.str.startswith("unrecognised_page").sum())
    result = {
        "adapter": str(b["adapter"]), "base_url": base_url, "agents": foreign["agents"],
        "recognised_share": round(1 - unrecognised / max(len(traj), 1), 4), "steps": int(len(traj)),
        "unrecognised_pages": unrecognised,
        "orders": {"agents_chose_place_order": int(chose), "placed_in_shop_records": placed,
                   "confirmed_share": round(placed / chose, 4) if chose and placed is not None else None,
                   "client_purchase_agents": int(events[events.event == "purchase"].buyer_id.nunique())},
        "type_conversion": {"spearman": None if rho is None else round(float(rho), 4), "types_compared": shared,
                            "own": types_own, "foreign": types_foreign},
        "arms": {name: {k: s[k] for k in ("completed", "crashed", "steps", "failures", "blocked_requests", "wall_s")}
                 | {"crash_rate": round(s["crashed"] / max(s["agents"], 1), 4)}
                 for name, s in (("own", own), ("foreign", foreign))},
    }
    path = Path(cfg.run_dir) / "bench" / "foreign_store.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
