"""Config section of the HTML report (report).

Defaults live here only; configs/*.yaml hold what a run changes. Merged by simpersona.config.load."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    title: str = "SimPersona evaluation report"
    path: str = ""  # "" = <run_dir>/report/report.html
    dpi: int = 90  # embedded PNG resolution
    max_merchants: int = 42  # merchants shown in per-merchant plots
