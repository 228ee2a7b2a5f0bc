"""Generate a synthetic clickstream with planted buyer types (run command: configs/synthetic.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("synthetic", argv, "events: {summary[out]}/events  planted types: {summary[out]}/planted")


if __name__ == "__main__":
    main()
