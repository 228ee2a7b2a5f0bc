"""Raw event logs -> canonical events, sessions, buyer features and agent traces (run command: configs/preprocess.yaml)."""

from __future__ import annotations

import json
import sys

from simpersona.config import load
from simpersona.stages import run_stage


def main(argv: list[str] | None = None) -> dict:
    cfg = load("preprocess", sys.argv[1:] if argv is None else argv)
    summary = run_stage("preprocess", cfg, force=True)  # starts or joins Ray; writes the manifest last
    print(json.dumps({k: v for k, v in summary.items() if k not in ("phases_s", "filled")}))
    print(f"artifacts: {summary['out']}  (features/, traces/, events/, quarantine/, summary.json)")
    return summary


if __name__ == "__main__":
    main()
