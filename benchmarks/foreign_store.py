"""The same sampled population on the project storefront and on a foreign shop through its adapter.

    python benchmarks/foreign_store.py run_dir=DIR [bench.adapter=adapters/oscar.yaml] [bench.base_url=URL]
        [bench.orders_cmd="..."] [sim.merchants=4] [sim.agents_per_merchant=25] [key=value ...]

DIR holds a finished assign and finetune stage (the persona policy). With bench.base_url empty the
benchmark starts the bundled django-oscar shop (scripts/thirdparty_shop.py) in a fresh data dir and
reads its order count itself; for another shop give its base URL and, to check orders against the
shop's records, bench.orders_cmd (a shell command printing the shop's order count).

The first two arms run the same agents (ids, types, seeds: simpersona.sim.population) with the policy:
  own             on the project storefront (the world the traces were replayed on)
  foreign         on the foreign shop (sim.storefront = bench.adapter)
  foreign_funnel  bench.funnel_agents_per_merchant agents per merchant on the foreign shop with policy=funnel
                  (each buys the first product: the adapter's path to an order, without the model)
Prints one JSON object (also written to <run_dir>/bench/foreign_store.json):
  pages           per foreign arm: steps whose page was read into a canonical page kind (target >= 0.95)
  orders          per foreign arm: agents whose policy chose place_order, orders the shop's own records
                  gained, their ratio (target >= 0.90), and the client-side purchase events beside them
  type_outcomes   per type and arm: agents, share converted, share carted, product pages per agent; the
                  Spearman of each between own and foreign over types with >= bench.min_agents agents
                  (target >= 0.8 for conversion; None where an arm has no variation to rank)
  funnel          per persona arm: share of agents that reached a product, cart, checkout, confirmation page
  arms            policy, agents, failures, blocked_requests, crash_rate, wall_s
"""

from __future__ import annotations

import json
import shutil
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
            "funnel_agents_per_merchant": 5, "start_timeout_s": 180.0}


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
    """One arm in a fresh folder (a resumed one could hold agents of another policy or shop)."""
    c = OmegaConf.merge(cfg, {"sim": {"variant": variant, **sim}})
    out = Path(c.run_dir) / "simulate" / variant
    shutil.rmtree(out, ignore_errors=True)
    return run_simulation(c), out


OUTCOMES = ("converted", "carted", "product_pages")
KINDS = ("product", "cart", "checkout", "confirmation")


def ordering_arm(cfg, variant: str, orders_cmd: str, **sim) -> tuple[dict, Path, int | None]:
    """An arm on the foreign shop, with the orders the shop's own records gained meanwhile."""
    before = order_count(orders_cmd)
    summary, out = arm(cfg, variant, **sim)
    after = order_count(orders_cmd)
    return summary, out, None if before is None else after - before


def outcomes_by_type(out: Path) -> dict[int, dict]:
    """type -> agents and the share converted, carted, and mean product pages per agent."""
    agents = pq.read_table(out / "agents.parquet").to_pandas()
    events = pq.read_table(out / "events").to_pandas()
    for name, event in (("converted", "purchase"), ("carted", "cart")):
        agents[name] = agents.agent_id.isin(set(events[events.event == event].buyer_id))
    views = events[events.event == "view"].groupby("buyer_id").size()
    agents["product_pages"] = agents.agent_id.map(views).fillna(0)
    return {int(k): {"agents": int(len(g)), **{o: round(float(g[o].mean()), 4) for o in OUTCOMES}}
            for k, g in agents.groupby("type_id")}


def type_spearman(by_type: dict, outcome: str, min_agents: int) -> float | None:
    """Spearman of the per-type outcome between the arms (types with min_agents in both, >= 3 of them, and
    some variation in each arm: a constant ranking has no Spearman)."""
    own, foreign = by_type["own"], by_type["foreign"]
    keys = [k for k in own if k in foreign and min(own[k]["agents"], foreign[k]["agents"]) >= min_agents]
    x, y = [own[k][outcome] for k in keys], [foreign[k][outcome] for k in keys]
    if len(keys) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def pages(out: Path) -> dict:
    traj = pq.read_table(out / "trajectories").to_pandas()
    unrecognised = int(traj.error.str.startswith("unrecognised_page").sum())
    return {"steps": int(len(traj)), "unrecognised": unrecognised,
            "recognised_share": round(1 - unrecognised / max(len(traj), 1), 4)}


def orders(out: Path, placed: int | None) -> dict:
    traj = pq.read_table(out / "trajectories").to_pandas()
    events = pq.read_table(out / "events").to_pandas()
    chose = int(traj[traj.action == "place_order"].agent_id.nunique())
    return {"agents_chose_place_order": chose, "placed_in_shop_records": placed,
            "confirmed_share": round(placed / chose, 4) if chose and placed is not None else None,
            "client_purchase_agents": int(events[events.event == "purchase"].buyer_id.nunique())}


def reached(out: Path) -> dict:
    """Share of agents whose session showed each page kind at least once."""
    traj = pq.read_table(out / "trajectories").to_pandas()
    agents = max(traj.agent_id.nunique(), 1)
    kind = traj.observation.str.extract(r"^page: (\w+)")[0]
    return {k: round(traj[kind == k].agent_id.nunique() / agents, 4) for k in KINDS}


def main(argv: list[str]) -> dict:
    cfg = load("simulate", argv)
    b = {**DEFAULTS, **dict(cfg.get("bench") or {})}
    proc, orders_cmd, base_url = None, str(b["orders_cmd"]), str(b["base_url"])
    tmp = tempfile.TemporaryDirectory(prefix="foreign_store_")
    if not base_url:
        data_dir = Path(tmp.name)
        proc, base_url = start_oscar(data_dir, float(b["start_timeout_s"]))
        orders_cmd = f"{sys.executable} {SHOP} orders --data-dir {data_dir}"
    shop = {"storefront": str(b["adapter"]), "base_url": base_url}
    try:
        own, own_dir = arm(cfg, "own_store")
        foreign, foreign_dir, placed = ordering_arm(cfg, "foreign_store", orders_cmd, **shop)
        funnel = ordering_arm(cfg, "foreign_funnel", orders_cmd, policy="funnel",
                              agents_per_merchant=int(b["funnel_agents_per_merchant"]), **shop)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()
    by_type = {"own": outcomes_by_type(own_dir), "foreign": outcomes_by_type(foreign_dir)}
    result = {
        "adapter": str(b["adapter"]), "base_url": base_url, "agents": foreign["agents"],
        "pages": {name: pages(d) for name, d in (("foreign", foreign_dir), ("foreign_funnel", funnel[1]))},
        "orders": {"foreign": orders(foreign_dir, placed), "foreign_funnel": orders(funnel[1], funnel[2])},
        "type_outcomes": {"spearman": {o: type_spearman(by_type, o, int(b["min_agents"])) for o in OUTCOMES},
                          "min_agents": int(b["min_agents"]), **by_type},
        "funnel": {name: reached(d) for name, d in (("own", own_dir), ("foreign", foreign_dir))},
        "arms": {name: {k: s[k] for k in ("policy", "agents", "completed", "crashed", "steps", "failures",
                                          "blocked_requests", "wall_s")}
                 | {"crash_rate": round(s["crashed"] / max(s["agents"], 1), 4)}
                 for name, s in (("own", own), ("foreign", foreign), ("foreign_funnel", funnel[0]))},
    }
    path = Path(cfg.run_dir) / "bench" / "foreign_store.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
