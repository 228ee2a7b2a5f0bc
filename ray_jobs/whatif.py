"""What-if experiments: store variants on one agent population (run command: configs/whatif.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("whatif", argv, "deltas: {out}/deltas.json  report: {report}", report=True)


if __name__ == "__main__":
    main()
