"""Raw event logs -> canonical events, sessions, buyer features and agent traces (run command: configs/preprocess.yaml)."""

from __future__ import annotations

from simpersona.jobs import stage_job


def main(argv: list[str] | None = None) -> dict:
    return stage_job("preprocess", argv, "artifacts: {out}  (features/, traces/, events/, quarantine/, summary.json)",
                     drop=("phases_s", "filled"), manifest=True)


if __name__ == "__main__":
    main()
