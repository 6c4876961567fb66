"""psutil sampling of a worker's whole process tree, and the limit decisions on it.

The pool asks this module two things: *what does each worker use now*
(for status, metrics and the memory budget) and *what must happen to it*
(a :class:`Verdict`: kill it now, recycle it after its task, retire it).
The pool carries the verdicts out; nothing here signals a process.

Cost, because a supervisor may hold 50+ workers and samples them a few
times a second:

- the ``psutil.Process`` object of every process in a tree is kept between
  samples (psutil caches static facts on it) and read inside ``oneshot()``;
- a tree's members are found through ``/proc/<pid>/task/<tid>/children``
  (tens of microseconds), not ``Process.children()``, which scans every
  process on the machine (milliseconds) on each call;
- only busy workers are sampled at ``sample_interval``, and only when a
  hard memory or CPU limit needs it; everything else is sampled every
  ``idle_sample_interval`` (figures for status, the budget, the soft limit).

Memory is the *current* RSS (or USS) summed over the tree, never a peak:
a peak inherited across fork says nothing about what the worker holds now.
CPU time is user + system of every live process in the tree plus the
children times the tree already reaped, so a short-lived subprocess's CPU
is not lost when it exits.
"""

from __future__ import annotations

import enum
import functools
import os
import random
import time
from collections.abc import Iterable

import attrs
import psutil

from .limits_config import LimitsConfig
from .worker import WorkerProcess, WorkerState

MIB = 1024 * 1024


class Action(enum.Enum):
    #: SIGKILL the worker's process group now; its task fails as worker-lost.
    KILL = "kill"
    #: Replace the worker; it finishes its current task first.
    RECYCLE = "recycle"
    #: Stop an idle worker without a replacement (scale down).
    RETIRE = "retire"


@attrs.frozen(kw_only=True)
class Verdict:
    worker: WorkerProcess
    action: Action
    #: One of the recycle reasons: memory_hard, memory_soft, cpu, max_age, idle.
    reason: str
    #: Human-readable figures behind the decision, for the log.
    detail: str


@attrs.frozen(kw_only=True)
class Sample:
    at: float
    rss: int
    uss: int | None
    #: CPU seconds (user + system) of the whole tree since the worker started.
    cpu_time: float
    #: Percent of one core between this sample and the previous one.
    cpu_percent: float | None
    processes: int


class TreeProbe:
    """Reads one worker's process tree; keeps psutil.Process objects between samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._procs: dict[int, psutil.Process] = {}
        self._last: Sample | None = None
        #: The tree's CPU time never goes backwards, even when a child leaves it
        #: unreaped (re-parented away); the limits compare differences of it.
        self._cpu_floor = 0.0

    def sample(self, *, uss: bool, now: float | None = None) -> Sample | None:
        """Measure the tree now; None when the worker itself is gone."""
        now = time.monotonic() if now is None else now
        pids = tree_pids(self.pid)
        if not pids:
            return None
        rss = 0
        uss_total: int | None = 0 if uss else None
        cpu = 0.0
        seen = 0
        for pid in pids:
            proc = self._procs.get(pid)
            if proc is None:
                try:
                    proc = self._procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
            try:
                with proc.oneshot():
                    if uss:
                        full = proc.memory_full_info()
                        rss += full.rss
                        uss_total = (uss_total or 0) + full.uss
                    else:
                        rss += proc.memory_info().rss
                    t = proc.cpu_times()
            except psutil.Error:
                # It exited between the listing and the read: its reaped time
                # shows up in its parent's children_* fields next time.
                self._procs.pop(pid, None)
                continue
            cpu += t.user + t.system + t.children_user + t.children_system
            seen += 1
        if not seen or self.pid not in self._procs:
            return None
        for gone in set(self._procs) - set(pids):
            del self._procs[gone]
        cpu = self._cpu_floor = max(cpu, self._cpu_floor)
        percent = None
        if self._last is not None and now > self._last.at:
            percent = max(0.0, (cpu - self._last.cpu_time) / (now - self._last.at) * 100.0)
        self._last = Sample(at=now, rss=rss, uss=uss_total, cpu_time=cpu, cpu_percent=percent, processes=seen)
        return self._last


@functools.cache
def _has_children_files() -> bool:
    """Linux with CONFIG_PROC_CHILDREN (a fact about the kernel, looked up once)."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (empty when ``root`` is gone)."""
    if not _has_children_files():  # pragma: no cover - non-Linux or an unusual kernel
        return _tree_pids_psutil(root)
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        out.append(pid)
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    stack.extend(int(c) for c in f.read().split())
            except OSError:
                continue  # the thread (or process) ended meanwhile
    return out


def _tree_pids_psutil(root: int) -> list[int]:
    try:
        proc = psutil.Process(root)
        return [root] + [c.pid for c in proc.children(recursive=True)]
    except psutil.Error:
        return []


@attrs.define(eq=False)
class _Watch:
    """What the monitor remembers about one worker."""

    probe: TreeProbe
    last: Sample | None = None
    next_sample_at: float = 0.0
    #: Task being run at the last look, and the tree's CPU time when it began.
    task_id: str | None = None
    task_cpu_start: float | None = None
    #: Since when the CPU percent has stayed above the limit.
    hot_since: float | None = None
    idle_since: float = attrs.field(factory=time.monotonic)
    max_age: float | None = None
    #: A kill already ordered: do not order it again on the next sample.
    doomed: bool = False
    #: memory_soft seen while busy: recycle once the task ends.
    soft_pending: bool = False


class LimitsMonitor:
    """Limit decisions for one namespace's workers (one instance per pool)."""

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self._watches: dict[WorkerProcess, _Watch] = {}
        self._uss = cfg.memory_metric == "uss"
        #: Busy workers need the fast interval only if something can kill them mid-task.
        self._fast = bool(cfg.memory_hard_mb or cfg.cpu_time_limit or cfg.cpu_percent_limit)
        self.soft_bytes = int(cfg.memory_soft_mb * MIB) if cfg.memory_soft_mb else None
        self.hard_bytes = int(cfg.memory_hard_mb * MIB) if cfg.memory_hard_mb else None
        self.budget_bytes = int(cfg.memory_budget_mb * MIB) if cfg.memory_budget_mb else None
        # Looked up on every task's start and end: decided once (cfg is fixed per monitor).
        self._cpu_limited = bool(cfg.cpu_time_limit or cfg.cpu_percent_limit)
        self._memory_limited = bool(self.soft_bytes or self.hard_bytes or self.budget_bytes)

    # -- bookkeeping ---------------------------------------------------------
    def _watch(self, worker: WorkerProcess, now: float) -> _Watch | None:
        if worker.pid is None:
            return None
        watch = self._watches.get(worker)
        if watch is None:
            max_age = None
            if self.cfg.max_age:
                max_age = self.cfg.max_age + random.uniform(0, self.cfg.max_age_jitter)
            watch = self._watches[worker] = _Watch(probe=TreeProbe(worker.pid), idle_since=now, max_age=max_age)
        return watch

    def forget(self, worker: WorkerProcess) -> None:
        self._watches.pop(worker, None)

    def _measure(self, worker: WorkerProcess, watch: _Watch, now: float) -> Sample | None:
        sample = watch.probe.sample(uss=self._uss, now=now)
        if sample is not None:
            watch.last = sample
        return sample

    def memory_of(self, sample: Sample) -> int:
        """The figure the limits compare: RSS or USS of the tree, per the config."""
        return sample.uss if self._uss and sample.uss is not None else sample.rss

    # -- task edges ----------------------------------------------------------
    def task_started(self, worker: WorkerProcess, task_id: str, now: float) -> None:
        """Called just before a task is sent: take the CPU baseline for its limit."""
        watch = self._watch(worker, now)
        if watch is None:
            return
        watch.task_id = task_id
        watch.hot_since = None
        watch.task_cpu_start = None
        if self._cpu_limited:
            sample = self._measure(worker, watch, now)
            watch.task_cpu_start = sample.cpu_time if sample else None
        if self._fast:
            # From the idle schedule to the busy one (never later than already due).
            watch.next_sample_at = min(watch.next_sample_at, now + self.cfg.sample_interval)

    def task_finished(self, worker: WorkerProcess, now: float) -> str | None:
        """After a task, with the worker idle again: the recycle reason, if any."""
        watch = self._watch(worker, now)
        if watch is None:
            return None
        watch.task_id = None
        watch.task_cpu_start = None
        watch.hot_since = None
        watch.idle_since = now
        if not self._memory_limited:
            return None
        sample = self._measure(worker, watch, now)
        watch.next_sample_at = now + self.idle_interval
        if sample is None:
            return None
        used = self.memory_of(sample)
        # Over the hard limit between samples: the task's result stands, the
        # worker goes at once (retired, not killed: nothing runs on it).
        if self.hard_bytes and used > self.hard_bytes:
            return "memory_hard"
        if watch.soft_pending or (self.soft_bytes and used > self.soft_bytes):
            watch.soft_pending = False
            return "memory_soft"
        return None

    @property
    def idle_interval(self) -> float:
        return max(self.cfg.idle_sample_interval, self.cfg.sample_interval)

    # -- periodic ------------------------------------------------------------
    def sample(self, workers: Iterable[WorkerProcess], now: float) -> list[Verdict]:
        """Sample the workers that are due; return the kills and recycles they call for."""
        verdicts: list[Verdict] = []
        for worker in workers:
            if worker.state not in (WorkerState.IDLE, WorkerState.BUSY):
                continue
            watch = self._watch(worker, now)
            if watch is None or watch.doomed or now < watch.next_sample_at:
                continue
            busy = worker.state is WorkerState.BUSY
            watch.next_sample_at = now + (self.cfg.sample_interval if busy and self._fast else self.idle_interval)
            sample = self._measure(worker, watch, now)
            if sample is None:
                continue
            verdict = self._judge(worker, watch, sample, busy=busy, now=now)
            if verdict is not None:
                verdicts.append(verdict)
        return verdicts

    def _judge(self, worker: WorkerProcess, watch: _Watch, sample: Sample, *, busy: bool, now: float) -> Verdict | None:
        used = self.memory_of(sample)
        metric = "USS" if self._uss else "RSS"
        if self.hard_bytes and used > self.hard_bytes:
            watch.doomed = True
            # Killed only mid-task; an idle worker (it may be being handed a
            # task right now) is retired instead, before it takes another one.
            return Verdict(worker=worker, action=Action.KILL if busy else Action.RECYCLE, reason="memory_hard",
                           detail=f"{metric} {used / MIB:.0f} MiB over hard limit {self.cfg.memory_hard_mb:g} MiB "
                                  f"({sample.processes} processes)")
        if busy and watch.task_id is None and worker.current_task is not None:
            # The task started without task_started (not through the pool):
            # take the baseline now rather than never.
            watch.task_id = worker.current_task.id
            watch.task_cpu_start = sample.cpu_time
        if busy and self.cfg.cpu_time_limit and watch.task_cpu_start is not None:
            spent = sample.cpu_time - watch.task_cpu_start
            if spent > self.cfg.cpu_time_limit:
                watch.doomed = True
                return Verdict(worker=worker, action=Action.KILL, reason="cpu",
                               detail=f"task used {spent:.2f} CPU seconds, limit {self.cfg.cpu_time_limit:g}")
        if busy and self.cfg.cpu_percent_limit and sample.cpu_percent is not None:
            if sample.cpu_percent > self.cfg.cpu_percent_limit:
                watch.hot_since = watch.hot_since if watch.hot_since is not None else now
                if now - watch.hot_since >= self.cfg.cpu_percent_window:
                    watch.doomed = True
                    return Verdict(worker=worker, action=Action.KILL, reason="cpu",
                                   detail=f"CPU above {self.cfg.cpu_percent_limit:g}% for "
                                          f"{now - watch.hot_since:.1f}s (last {sample.cpu_percent:.0f}%)")
            else:
                watch.hot_since = None
        if self.soft_bytes and used > self.soft_bytes and not watch.soft_pending:
            watch.soft_pending = True
            return Verdict(worker=worker, action=Action.RECYCLE, reason="memory_soft",
                           detail=f"{metric} {used / MIB:.0f} MiB over soft limit {self.cfg.memory_soft_mb:g} MiB")
        return None

    def policies(self, workers: Iterable[WorkerProcess], now: float, *, surplus: int) -> list[Verdict]:
        """Age and idleness (no psutil): recycle old workers, retire up to ``surplus`` idle ones."""
        verdicts: list[Verdict] = []
        idle: list[tuple[float, WorkerProcess]] = []
        for worker in workers:
            if worker.state not in (WorkerState.IDLE, WorkerState.BUSY):
                continue
            watch = self._watch(worker, now)
            if watch is None or watch.doomed:
                continue
            if worker.state is WorkerState.BUSY:
                watch.idle_since = now
            elif self.cfg.idle_timeout and now - watch.idle_since >= self.cfg.idle_timeout:
                idle.append((watch.idle_since, worker))
            age = now - worker.started_at
            if watch.max_age is not None and age >= watch.max_age:
                watch.max_age = None  # decided once; the pool replaces it
                verdicts.append(Verdict(worker=worker, action=Action.RECYCLE, reason="max_age",
                                        detail=f"age {age:.0f}s reached max_age {self.cfg.max_age:g}s"))
        idle.sort(key=lambda item: item[0])
        for since, worker in idle[:max(0, surplus)]:
            verdicts.append(Verdict(worker=worker, action=Action.RETIRE, reason="idle",
                                    detail=f"idle for {now - since:.0f}s (idle_timeout {self.cfg.idle_timeout:g}s)"))
        return verdicts

    # -- figures -------------------------------------------------------------
    def usage(self, worker: WorkerProcess) -> dict[str, float | int | None]:
        """The worker's last figures, JSON-ready (None when never sampled)."""
        watch = self._watches.get(worker)
        sample = watch.last if watch else None
        if sample is None:
            return {"rss": None, "uss": None, "cpu_percent": None, "cpu_time": None, "processes": None}
        return {
            "rss": sample.rss,
            "uss": sample.uss,
            "cpu_percent": round(sample.cpu_percent, 1) if sample.cpu_percent is not None else None,
            "cpu_time": round(sample.cpu_time, 3),
            "processes": sample.processes,
        }

    def fits_budget(self, workers: Iterable[WorkerProcess], *, starting: int) -> bool:
        """Would one more worker keep the namespace within its memory budget?

        Workers never sampled are measured now; workers still starting (and
        the new one) are assumed to grow as large as the largest known one.
        """
        if self.budget_bytes is None:
            return True
        now = time.monotonic()
        known: list[int] = []
        for worker in workers:
            if worker.state not in (WorkerState.IDLE, WorkerState.BUSY):
                continue
            watch = self._watch(worker, now)
            if watch is None:
                continue
            sample = watch.last or self._measure(worker, watch, now)
            if sample is not None:
                known.append(self.memory_of(sample))
        if not known:
            return True
        return sum(known) + max(known) * (starting + 1) <= self.budget_bytes

    def total(self, workers: Iterable[WorkerProcess]) -> int:
        """Sum of the compared memory figure over the workers' last samples."""
        total = 0
        for worker in workers:
            watch = self._watches.get(worker)
            if watch is not None and watch.last is not None:
                total += self.memory_of(watch.last)
        return total
