"""The crop stage's worker pool: worker processes (spawn) with a bounded number of tasks in flight, which survive
a worker's death: the tasks lost with the pool are re-run one image at a time, alone in a fresh pool, so an image
that kills its worker costs only itself (reported) and the others are cropped. Workers end with the main process.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

from reidkit.errors import ReidError

from .crop_worker import CropTask, TaskResult, WorkerSettings, _init_worker, _run_task, process_task


class WorkerPoolError(ReidError, RuntimeError):
    """The worker processes keep dying without finishing any task (a broken environment, not a bad image)."""


class WorkerPool:
    """Worker processes with a bounded number of tasks in flight that survives a worker's death: the tasks lost
    with a broken pool are re-run one image at a time, alone in a fresh pool, so a death is pinned on its image."""

    MAX_DEATHS_WITHOUT_PROGRESS = 5   # before any task ever finished: the environment, not an image
    MAX_PINNED_DEATHS = 100           # once workers have worked: consecutive crashing images, each reported

    def __init__(self, workers: int, settings: WorkerSettings) -> None:
        self.workers = workers
        self.settings = settings
        self.inflight: dict[cf.Future, CropTask] = {}
        self.executor: cf.ProcessPoolExecutor | None = None
        self.deaths_without_progress = 0
        self.ever_finished = False
        self._local = workers == 0
        if self._local:
            _init_worker(settings)
        else:
            self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.executor = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                               initargs=(self.settings, True))

    def _restart(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)  # type: ignore[union-attr]
        self.deaths_without_progress += 1
        limit = self.MAX_PINNED_DEATHS if self.ever_finished else self.MAX_DEATHS_WITHOUT_PROGRESS
        if self.deaths_without_progress > limit:
            raise WorkerPoolError(
                f"the crop worker processes died {self.deaths_without_progress} times in a row without finishing a "
                "task: not a bad image but the environment (out of memory? a main module the spawned workers cannot "
                "import, e.g. code read from stdin?). Re-run with --workers 0 to see the error; finished rows are "
                "kept")
        self._start()

    def submit(self, task: CropTask) -> list[TaskResult]:
        """Queue a task; returns results that are ready (blocking while too many tasks are in flight)."""
        if self._local:
            return [process_task(task, self.settings)]
        self.inflight[self.executor.submit(_run_task, task)] = task  # type: ignore[union-attr]
        return self.collect(block=len(self.inflight) >= 2 * self.workers)

    def collect(self, block: bool) -> list[TaskResult]:
        if self._local or not self.inflight:
            return []
        done, _ = cf.wait(list(self.inflight), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        results: list[TaskResult] = []
        lost: list[CropTask] = []
        for fut in done:
            self._harvest(fut, results, lost)
        if lost:  # the pool is broken: every task still in flight is lost or already finished
            for fut in list(self.inflight):
                self._harvest(fut, results, lost)
            self._restart()
            results.extend(self._isolate(lost))
        return results

    def _harvest(self, fut: cf.Future, results: list[TaskResult], lost: list[CropTask]) -> None:
        task = self.inflight.pop(fut)
        try:
            results.append(fut.result())
            self.deaths_without_progress, self.ever_finished = 0, True
        except cf.process.BrokenProcessPool:
            lost.append(task)

    def _isolate(self, lost: list[CropTask]) -> list[TaskResult]:
        """Re-run the images of lost tasks one by one, each alone in the pool."""
        results = []
        for single in (one for task in lost for one in task.split()):
            try:
                results.append(self.executor.submit(_run_task, single).result())  # type: ignore[union-attr]
                self.deaths_without_progress, self.ever_finished = 0, True
            except cf.process.BrokenProcessPool:
                rec = single.records[0]
                results.append(TaskResult(None, [(rec, f"{rec.path}: the worker process died while processing this "
                                                      "image (crashing decoder?)")]))
                self._restart()
        return results

    def drain(self) -> list[TaskResult]:
        out: list[TaskResult] = []
        while self.inflight:
            out.extend(self.collect(block=True))
        return out

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
