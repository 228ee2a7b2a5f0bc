"""Held-out storefront evaluation + the HTML report (run command: configs/evaluate.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("evaluate", argv, "metrics: {out}/metrics.json  report: {report}", report=True)


if __name__ == "__main__":
    main()
