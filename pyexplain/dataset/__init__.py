"""Explaining whole datasets: sources, output store, resumable and distributed runs."""
from .config import ModelSpec, RunConfig
from .runner import Job, Summary, run_dataset
from .sources import Source, collect_sources

__all__ = ["Job", "ModelSpec", "RunConfig", "Source", "Summary", "collect_sources", "run_dataset"]
