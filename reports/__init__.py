"""reports: HTML reports and the recommended config, built from stored results (never runs engines)."""
from reports.html import render_capacity_report, render_run_report, render_study_report
from reports.recommended import recommended_config, write_recommended

__all__ = ["render_study_report", "render_run_report", "render_capacity_report", "write_recommended", "recommended_config"]
