"""Explain every image of a folder or list file, resumably, on one process or many (torchrun).

Work plan, identical on every rank:

1. Rank 0 checks the output folder against the run's configuration (``store.prepare``).
2. *Scan*: each rank hashes a round-robin share of the sources and decides which are settled: a
   journal record of this configuration and these source bytes with complete outputs, or a source
   known to be unreadable. The verdicts are all-gathered.
3. *Batch size*: given, or on CUDA measured by a probe (``execution.measured_batch_size``; the
   smallest over the ranks), or the CPU default.
4. *Work*: the sorted sources are cut into fixed batches of ``batch_size`` (batch ``k`` holds
   sources ``k·B … k·B+B−1``); every batch holding an unsettled source is explained whole, so a batch
   always has the same rows whatever the number of ranks or what an earlier run finished, and
   float results do not depend on either. Those batches are shared round-robin among the ranks;
   each rank writes the outputs of its unsettled sources and journals them.
5. Rank 0 gathers the new records and writes the manifest: one record per source, sorted.
"""
from __future__ import annotations

import hashlib
import math
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..api import explain
from ..errors import PyExplainError
from ..io import load_image, max_image_bytes
from ..registry import get_method
from .config import ModelSpec, RunConfig, check_precision, resolve_options
from .distributed import Ranks, env_world, rank_device, shard
from .execution import (DEFAULT_BATCH, MAX_AUTO_BATCH, PROBE_ITERATIONS, PROBE_ROWS, BackoffBatcher, BatchChoice,
                        measured_batch_size, measures_memory, precision)
from .sources import Source, collect_sources, file_sha256
from .store import (FolderLock, Journal, Layout, is_complete, prepare, read_records, same_source, write_manifest,
                    write_npy, write_png)


@dataclass(frozen=True)
class Job:
    """One ``explain-dataset`` invocation. ``device`` is ``cpu``, ``cuda`` or ``cuda:N``."""

    src: Path
    out: Path
    model: ModelSpec
    method: str = "gradxinput"
    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    device: str = "cpu"
    batch_size: int | None = None  #: None: measured on CUDA (a probe batch), 8 on the CPU
    precision: str = "float32"
    channels_last: bool = False
    png: bool = False
    overwrite: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class Summary:
    sources: int
    explained: int
    already_complete: int
    unreadable: int
    failed: int  #: read, but not explained (a map with NaN or infinite values)
    seconds: float
    images_per_second: float
    world_size: int
    batch_size: int
    batch_choice: str
    micro_batch: list[int]
    peak_rss_mib: list[float]
    peak_cuda_mib: list[float] | None
    manifest: str


@dataclass(frozen=True)
class Verdict:
    """The scan's finding for one source: its hash and, when settled, its record."""

    sha256: str | None
    record: dict[str, Any] | None


def _reason(message: object, source: Source) -> str:
    """A message about ``source`` without its path prefix (so records do not depend on how SRC was spelled)."""
    text = " ".join(str(message).split())
    prefix = f"{source.path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class _Records:
    """Builds manifest records; every field is independent of rank, timing and SRC spelling."""

    def __init__(self, config: RunConfig, model_name: str) -> None:
        self.common = {"config": config.digest, "method": config.method, "options": config.as_json()["options"],
                       "model": model_name, "precision": config.precision}

    def unreadable(self, key: str, sha256: str | None, reason: str) -> dict[str, Any]:
        return {**self.common, "source": key, "sha256": sha256, "status": "unreadable", "reason": reason,
                "target": None, "label": None, "score": None, "outputs": {}, "bytes": {}, "notes": []}

    def failed(self, key: str, sha256: str, reason: str) -> dict[str, Any]:
        """A source that was read but could not be explained (e.g. the model's output is not finite)."""
        return {**self.unreadable(key, sha256, reason), "status": "failed"}

    def ok(self, key: str, sha256: str, target: int, label: str, score: float, outputs: dict[str, str],
           sizes: dict[str, int], notes: list[str]) -> dict[str, Any]:
        return {**self.common, "source": key, "sha256": sha256, "status": "ok", "reason": None, "target": target,
                "label": label, "score": score, "outputs": outputs, "bytes": sizes, "notes": notes}


def _scan(source: Source, prior: list[dict[str, Any]], layout: Layout, config: RunConfig, want_png: bool,
          records: _Records) -> Verdict:
    try:
        sha = file_sha256(source.path, max_image_bytes())
    except PyExplainError as exc:
        return Verdict(None, records.unreadable(source.key, None, _reason(exc, source)))
    for record in reversed(prior):
        if is_complete(record, layout, config.digest, sha, want_png):
            return Verdict(sha, record)
    if any(r.get("status") == "unreadable" and same_source(r, config.digest, sha) for r in prior):
        try:  # cheap re-check: the same bytes are still unreadable unless e.g. the pixel limit changed
            load_image(source.path)
        except PyExplainError as exc:
            return Verdict(sha, records.unreadable(source.key, sha, _reason(exc, source)))
    return Verdict(sha, None)


#: Reason of a failed record whose map has NaN or infinite values.
NON_FINITE = "the map has NaN or infinite values (the model's output is not finite there); nothing written"


def _chunk_seed(seed: int, batch: int, start: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{batch}:{start}".encode()).digest()[:7], "little")


class _Worker:
    """Explains whole batches and writes the outputs of their unsettled sources."""

    def __init__(self, job: Job, net: torch.nn.Module, preprocess, target: int | None, options: dict[str, Any],
                 layout: Layout, records: _Records, journal: Journal, device: str) -> None:
        self.job, self.net, self.preprocess, self.target, self.options = job, net, preprocess, target, options
        self.layout, self.records, self.journal, self.device = layout, records, journal, torch.device(device)
        self.batcher = BackoffBatcher(DEFAULT_BATCH[self.device.type], self._note_backoff)

    def use_batch_size(self, size: int) -> None:
        self.batcher = BackoffBatcher(size, self._note_backoff)

    @staticmethod
    def _note_backoff(size: int) -> None:
        print(f"note: out of memory; continuing with {size} images per step", file=sys.stderr)

    def load(self, sources: list[tuple[int, Source]], verdicts: dict[int, Verdict], pending: set[int]):
        """Decode a batch: ``(rows, unreadable_records)``; rows are ``(index, picture, notes)``; records
        are made for the unsettled sources only."""
        rows, unreadable = [], []
        for index, source in sources:
            verdict = verdicts[index]
            if verdict.record is not None and verdict.record["status"] == "unreadable":
                continue
            notes: list[str] = []
            try:
                picture = load_image(source.path, notes.append)
            except PyExplainError as exc:
                if index in pending:
                    unreadable.append(self.records.unreadable(source.key, verdict.sha256, _reason(exc, source)))
                continue
            rows.append((index, picture, [_reason(note, source) for note in notes]))
        return rows, unreadable

    def _input(self, pictures: list) -> Tensor:
        x = torch.cat([self.preprocess(picture) for picture in pictures]).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.job.channels_last else x

    def probe(self, pictures: list) -> None:
        """Explain ``pictures`` once, as a batch of the run would be, but with at most
        :data:`PROBE_ITERATIONS` iterations of an iterative method (its peak memory hardly grows
        after the first few)."""
        options = dict(self.options)
        if "iterations" in options:
            options["iterations"] = min(options["iterations"], PROBE_ITERATIONS)
        x = self._input(pictures)
        with precision(self.job.precision, self.device.type):
            explain(self.net, x, self.job.method, target=self.target, **options)

    def explain(self, batch: int, rows) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Maps ``[n, H, W]``, extras, targets and scores of the batch's rows (float32, on the CPU)."""
        x = self._input([picture for _, picture, _ in rows])

        def compute(start: int, stop: int):
            torch.manual_seed(_chunk_seed(self.job.seed, batch, start))
            with precision(self.job.precision, self.device.type):
                result = explain(self.net, x[start:stop], self.job.method, target=self.target, **self.options)
            extras = {k: (v.sum(1) if v.ndim == 4 else v).float().cpu() for k, v in result.extras.items()}
            return result.map.float().cpu(), extras, result.targets.cpu(), result.scores.float().cpu()

        parts = self.batcher.run(x.shape[0], compute)
        maps = torch.cat([p[0] for p in parts])
        extras = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        return maps, extras, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])

    def figure(self, source: Source, picture, attribution_map: np.ndarray, target: int, score: float):
        """The PNG of one map: the image and its map side by side, a colour bar and a title."""
        from ..visualize import explanation_image, model_picture, title_line  # matplotlib: only when drawing

        title = title_line(self.job.model.name, self.job.method, target, self.preprocess.label(target),
                           image=source.key, logit=score)
        sign = get_method(self.job.method).map_sign(self.options)
        return explanation_image(model_picture(picture, self.preprocess), attribution_map, sign, title)

    def write(self, source: Source, sha256: str, picture, notes: list[str], attribution_map: np.ndarray,
              extras: dict[str, np.ndarray], target: int, score: float) -> dict[str, Any]:
        outputs, sizes = {}, {}
        arrays = {"map": attribution_map, **extras}
        for kind, array in arrays.items():
            outputs[kind] = self.layout.output(kind, source.key)
            sizes[kind] = write_npy(self.layout.root / outputs[kind], np.ascontiguousarray(array, dtype=np.float32))
        if self.job.png:
            outputs["png"] = self.layout.output("png", source.key)
            sizes["png"] = write_png(self.layout.root / outputs["png"], self.figure(source, picture, attribution_map, target, score))
        record = self.records.ok(source.key, sha256, target, self.preprocess.label(target), score, outputs, sizes, notes)
        self.journal.append(record)  # only after every output is in place
        return record


def _choose_batch(job: Job, worker: _Worker, sources: list[Source], pending: list[int], device: str,
                  ranks: Ranks) -> BatchChoice:
    """``--batch-size`` if given; on CUDA the size measured by a probe on the first readable pending
    images (the smallest over the ranks, which all probe), capped by :data:`MAX_AUTO_BATCH` and by
    the pending images per rank; else the default."""
    if job.batch_size is not None:
        return BatchChoice(job.batch_size, "given (--batch-size)")
    kind = torch.device(device).type
    if not measures_memory(device):
        return BatchChoice(DEFAULT_BATCH[kind], f"default on {kind}")
    pictures = []
    for index in pending:
        try:
            pictures.append(load_image(sources[index].path))
        except PyExplainError:
            continue
        if len(pictures) == PROBE_ROWS:
            break
    if not pictures:
        return BatchChoice(DEFAULT_BATCH[kind], f"default on {kind} (no readable image to probe)")
    limit = min(MAX_AUTO_BATCH, math.ceil(len(pending) / ranks.world))
    choice = measured_batch_size(lambda: worker.probe(pictures), len(pictures), limit, torch.device(device))
    return min(ranks.all_gather(choice), key=lambda c: c.size)


def run_dataset(job: Job) -> Summary:
    """Run ``job`` on this process (one rank of a torchrun job, or alone). Every rank returns the
    same :class:`Summary`; rank 0 wrote the manifest."""
    rank, world, local = env_world()
    device = rank_device(job.device, local, world)
    check_precision(job.precision, device)
    if job.batch_size is not None and job.batch_size < 1:
        raise PyExplainError(f"--batch-size must be at least 1, got {job.batch_size}")
    ranks = Ranks.start(device)
    try:
        return _run(job, ranks, device)
    finally:
        ranks.close()


def _run(job: Job, ranks: Ranks, device: str) -> Summary:
    info = get_method(job.method)
    options = resolve_options(job.method, job.options)
    torch.manual_seed(job.seed)  # random-weight models initialise identically on every rank
    net, preprocess = job.model.load(device)
    if job.channels_last:
        net = net.to(memory_format=torch.channels_last)
    target = preprocess.class_index(job.target) if job.target is not None else None
    config = RunConfig(job.model.identity(), job.method, options, target, job.precision, job.seed)
    layout = Layout(job.out)
    sources = collect_sources(job.src, exclude=job.out)
    records = _Records(config, job.model.name)

    failure, lock = None, None
    try:
        if ranks.rank == 0:  # rank 0 holds the folder's lock for the whole run
            try:
                lock = FolderLock.acquire(layout)
                prepare(layout, config, job.overwrite)
            except PyExplainError as exc:
                failure = str(exc)
        failure = ranks.broadcast(failure)
        if failure:
            raise PyExplainError(failure)
        return _work_and_summarize(job, ranks, device, info.name, layout, config, sources, records, net, preprocess,
                                   target, options)
    finally:
        if lock is not None:
            lock.release()


def _work_and_summarize(job: Job, ranks: Ranks, device: str, method: str, layout: Layout, config: RunConfig,
                        sources: list[Source], records: _Records, net: torch.nn.Module, preprocess,
                        target: int | None, options: dict[str, Any]) -> Summary:
    journal = Journal(layout.journal(ranks.rank))
    try:
        prior = read_records(layout)
        mine = {i: _scan(sources[i], prior.get(sources[i].key, []), layout, config, job.png, records)
                for i in shard(range(len(sources)), ranks.rank, ranks.world)}
        verdicts: dict[int, Verdict] = {}
        for part in ranks.all_gather(mine):
            verdicts.update(part)
        pending = [i for i in range(len(sources)) if verdicts[i].record is None]
        worker = _Worker(job, net, preprocess, target, options, layout, records, journal, device)
        choice = _choose_batch(job, worker, sources, pending, device, ranks)
        batch_size = choice.size
        worker.use_batch_size(batch_size)
        batches = shard(sorted({i // batch_size for i in pending}), ranks.rank, ranks.world)
        started = time.perf_counter()
        new_records = _work(worker, sources, verdicts, set(pending), batches, batch_size, ranks.rank == 0 and job.progress, method)
        seconds = time.perf_counter() - started
    finally:
        journal.close()

    stats = {"seconds": seconds, "micro_batch": worker.batcher.size,
             "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "cuda": torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None}
    gathered = ranks.gather((new_records, stats))
    summary = None
    if ranks.rank == 0:
        fresh = {r["source"]: r for part, _ in gathered for r in part}
        final = [fresh.get(s.key) or verdicts[i].record for i, s in enumerate(sources)]
        write_manifest(layout, final)
        all_stats = [s for _, s in gathered]
        explained = sum(1 for r in fresh.values() if r["status"] == "ok")
        elapsed = max(s["seconds"] for s in all_stats)
        summary = Summary(
            sources=len(sources), explained=explained,
            already_complete=sum(1 for v in verdicts.values() if v.record is not None and v.record["status"] == "ok"),
            unreadable=sum(1 for r in final if r["status"] == "unreadable"),
            failed=sum(1 for r in final if r["status"] == "failed"), seconds=elapsed,
            images_per_second=explained / elapsed if elapsed > 0 else 0.0, world_size=ranks.world,
            batch_size=batch_size, batch_choice=choice.how, micro_batch=[s["micro_batch"] for s in all_stats],
            peak_rss_mib=[round(s["rss"], 1) for s in all_stats],
            peak_cuda_mib=None if all_stats[0]["cuda"] is None else [round(s["cuda"], 1) for s in all_stats],
            manifest=str(layout.manifest),
        )
    return ranks.broadcast(summary)


def _work(worker: _Worker, sources: list[Source], verdicts: dict[int, Verdict], pending: set[int],
          batches: list[int], batch_size: int, show: bool, method: str) -> list[dict[str, Any]]:
    def members(k: int) -> list[tuple[int, Source]]:
        return [(i, sources[i]) for i in range(k * batch_size, min(len(sources), (k + 1) * batch_size))]

    total = sum(1 for k in batches for i, _ in members(k) if i in pending)
    bar = tqdm(total=total, desc=method, unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True)
    written: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=1) as loader:  # decode the next batch while this one runs
        upcoming = loader.submit(worker.load, members(batches[0]), verdicts, pending) if batches else None
        for position, k in enumerate(batches):
            rows, unreadable = upcoming.result()
            if position + 1 < len(batches):
                upcoming = loader.submit(worker.load, members(batches[position + 1]), verdicts, pending)
            for record in unreadable:
                worker.journal.append(record)
                written.append(record)
                bar.update(1)
            if not rows:
                continue
            maps, extras, targets, scores = worker.explain(k, rows)
            for row, (index, picture, notes) in enumerate(rows):
                if index in pending and not torch.isfinite(maps[row]).all():
                    record = worker.records.failed(sources[index].key, verdicts[index].sha256, NON_FINITE)
                    worker.journal.append(record)
                    written.append(record)
                    bar.update(1)
                elif index in pending:
                    written.append(worker.write(
                        sources[index], verdicts[index].sha256, picture, notes, maps[row].numpy(),
                        {name: value[row].numpy() for name, value in extras.items()}, int(targets[row]), float(scores[row])))
                    bar.update(1)
    bar.close()
    return written
