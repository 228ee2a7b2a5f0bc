"""Every stage in order on one run directory; finished stages whose config and inputs are unchanged
are skipped. Run command: configs/pipeline.yaml (`make demo` runs it with config=demo)."""

from __future__ import annotations

import sys

from simpersona.config import load
from simpersona.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> dict:
    cfg = load("pipeline", sys.argv[1:] if argv is None else argv)
    result = run_pipeline(cfg)
    print(f"report: {result['report']}")
    return result


if __name__ == "__main__":
    main()
