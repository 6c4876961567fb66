"""One namespace's pool of warm workers: min..max, recycling, respawn, degraded state.

A worker's death is an event the pool waits on (one watcher task per
worker), never an exception that unwinds the pool: the task it held fails
as WORKER_LOST, the worker is replaced under an exponential, capped backoff
that never gives up, and other workers and other namespaces carry on.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import Counter, deque

from loguru import logger

from . import events as ev
from ._tasks import TaskOwner
from .config import NamespaceConfig
from .errors import NamespaceUnavailable, WorkerLost, WorkerProtocolError, WorkerStartError
from .limits import Action, LimitsMonitor, Verdict
from .records import FailureKind, Outcome, Task, TaskError
from .worker import WorkerProcess, WorkerState, describe_exit

#: Stop reasons that are the pool's own decision; anything else is a crash.
PLANNED_REASONS = frozenset({"max_tasks", "max_age", "idle", "memory_soft", "shutdown", "reload"})

#: Error type reported to the task when its worker was killed for a reason.
LOST_ERROR_TYPES = {
    "memory_hard": ("MemoryLimitExceeded", "worker exceeded its hard memory limit and was killed"),
    "cpu": ("CpuLimitExceeded", "task exceeded its CPU limit and the worker was killed"),
    "protocol_error": ("WorkerProtocolError", "worker broke the protocol and was replaced"),
}

#: Recycle reasons after which a worker takes no further task, even before
#: its successor is warm: it already holds more memory than it should.
RETIRE_AT_ONCE = frozenset({"memory_soft", "memory_hard"})

#: Seconds between the maintenance loop's looks while something is pending
#: (a respawn, a scale-up, a recycle) or a time-based policy is set...
BUSY_TICK = 0.25
#: ...and while the pool is simply warm and idle. Every pool's wake-ups add
#: up: 50 namespaces looking 4 times a second cost an idle supervisor about
#: 3% of a core (benchmarks/, "scale").
IDLE_TICK = 1.0


class _Wake:
    """A flag the maintenance loop sleeps on, with a cheap timed wait.

    ``asyncio.wait_for(event.wait(), timeout)`` starts a task per call and
    costs ~150 µs per idle tick on a small machine: at 50 idle namespaces
    that alone was most of the supervisor's idle CPU.
    """

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float) -> None:
        """Return when set, or after ``timeout`` seconds."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _on_grid(period: float) -> float:
    """Seconds until the next multiple of ``period`` on the loop's clock.

    Pools that sleep on the same grid wake in the same loop turn: one
    wake-up of the process serves all of them, where each pool on its own
    phase would cost one each (the bulk of an idle supervisor's CPU).
    """
    return period - asyncio.get_running_loop().time() % period


class PoolState(enum.Enum):
    STARTING = "starting"
    OK = "ok"
    #: Workers fail to start or keep crashing; respawns continue under backoff.
    DEGRADED = "degraded"
    DRAINING = "draining"
    STOPPED = "stopped"


class Pool:
    def __init__(self, ns: NamespaceConfig, *, bus: ev.EventBus) -> None:
        self.ns = ns
        self.bus = bus
        self.state = PoolState.STARTING
        self.workers: list[WorkerProcess] = []
        self.last_error: str | None = None
        self.restarts: Counter[str] = Counter()
        self.tasks_done = 0
        self.tasks_failed = 0
        self._idle: deque[WorkerProcess] = deque()
        self._waiters: deque[asyncio.Future[WorkerProcess]] = deque()
        self._retiring: dict[WorkerProcess, str] = {}
        #: Retiring workers whose successor is already warm.
        self._replaced: set[WorkerProcess] = set()
        self._max_tasks: dict[WorkerProcess, int] = {}
        self._owner = TaskOwner(f"pool:{ns.name}")
        self._spawning = 0
        self._failure_streak = 0
        self._next_spawn_at = 0.0
        self._wake = _Wake()
        self._log = logger.bind(namespace=ns.name)
        self.limits = LimitsMonitor(ns.limits)
        #: Why each worker's predecessor went (status: "last recycle reason").
        self._lineage: dict[WorkerProcess, str] = {}
        self._unreplaced: deque[str] = deque(maxlen=64)
        #: Figures behind a limit kill, added to the failed task's error message.
        self._kill_detail: dict[WorkerProcess, str] = {}

    # -- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        """Start min_workers and the maintenance loop; returns once they tried to start."""
        self._owner.spawn(self._maintain(), name="maintain")
        self._owner.spawn(self._limits_loop(), name="limits")
        await asyncio.gather(*(self._spawn() for _ in range(self.ns.min_workers)))
        if self.state is PoolState.STARTING:
            self.state = PoolState.OK

    async def close(self, *, timeout: float = 30.0, reason: str = "shutdown") -> None:
        """Stop taking tasks, let running ones finish within ``timeout``, stop every worker."""
        if self.state is PoolState.STOPPED:
            return
        self.state = PoolState.DRAINING
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(NamespaceUnavailable(f"namespace {self.ns.name} is shutting down"))
        self._waiters.clear()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.busy:
            # Past the graceful timeout: ask running handlers to stop
            # cooperatively first; shutdown escalates to TERM/KILL after.
            for worker in self.workers:
                if worker.state is WorkerState.BUSY:
                    worker.cancel_current()
            cancel_deadline = time.monotonic() + self.ns.cancel_grace
            while self.busy and time.monotonic() < cancel_deadline:
                await asyncio.sleep(0.05)
        await asyncio.gather(*(w.shutdown(grace=self.ns.kill_grace, reason=reason) for w in list(self.workers)))
        await self._owner.aclose()
        self.state = PoolState.STOPPED

    # -- figures -------------------------------------------------------
    @property
    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.state in (WorkerState.IDLE, WorkerState.BUSY)]

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.state is WorkerState.BUSY)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def free_slots(self) -> int:
        """How many more tasks this pool could start now (for source backpressure)."""
        if self.state in (PoolState.DRAINING, PoolState.STOPPED):
            return 0
        if self.state is PoolState.DEGRADED and not self.live:
            return 0
        return max(0, self.ns.max_workers - self.busy - self.waiting)

    # -- running tasks ---------------------------------------------------
    async def execute(self, task: Task) -> Outcome:
        """Run one try of ``task`` on a warm worker; never raises for worker trouble."""
        idle = self._idle
        if idle and self.state is PoolState.OK and idle[0].state is WorkerState.IDLE:
            worker = idle.popleft()  # the common case, without _acquire's coroutine
        else:
            try:
                worker = await self._acquire()
            except NamespaceUnavailable as exc:
                return Outcome(
                    error=TaskError(type="NamespaceUnavailable", message=str(exc), kind=FailureKind.UNAVAILABLE),
                    namespace=self.ns.name,
                )
        self.bus.emit(
            ev.TaskStarted(namespace=self.ns.name, task_id=task.id, task_type=task.type, attempt=task.attempt,
                           worker_pid=worker.pid)
        )
        started = time.monotonic()
        self.limits.task_started(worker, task.id, started)
        try:
            outcome = await worker.run(task, timeout=self.ns.timeout)
        except (WorkerLost, WorkerProtocolError) as exc:
            reason = worker.stop_reason or "crash"
            type_, message = LOST_ERROR_TYPES.get(reason, ("WorkerLost", "worker died while running the task"))
            detail = self._kill_detail.pop(worker, None)
            if detail is not None:
                message = f"{message} ({detail})"
            outcome = Outcome(
                error=TaskError(type=type_, message=f"{message}: {exc}", kind=FailureKind.WORKER_LOST),
                namespace=self.ns.name, worker_pid=worker.pid, duration=time.monotonic() - started,
            )
        finally:
            self._release(worker)
        if outcome.ok:
            self.tasks_done += 1
            self._failure_streak = 0
        else:
            self.tasks_failed += 1
        return outcome

    async def _acquire(self) -> WorkerProcess:
        while True:
            if self.state in (PoolState.DRAINING, PoolState.STOPPED):
                raise NamespaceUnavailable(f"namespace {self.ns.name} is {self.state.value}")
            while self._idle:
                worker = self._idle.popleft()
                if worker.state is WorkerState.IDLE:
                    return worker
            if self._can_grow():
                self._spawn_soon(name="scale-up")
            elif self.state is PoolState.DEGRADED and not self.live and not self._spawning:
                raise NamespaceUnavailable(f"namespace {self.ns.name} is degraded: {self.last_error}")
            fut: asyncio.Future[WorkerProcess] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                return await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._offer(fut.result())  # handed over just as we were cancelled
                raise
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def _can_grow(self) -> bool:
        active = self._settled() + self._spawning
        if active >= self.ns.max_workers or time.monotonic() < self._next_spawn_at:
            return False
        return self._within_budget()

    def _settled(self) -> int:
        """Workers past their start that are not on their way out (starting ones are in ``_spawning``)."""
        return sum(
            1 for w in self.workers
            if w.state in (WorkerState.IDLE, WorkerState.BUSY) and w not in self._retiring
        )

    def _within_budget(self) -> bool:
        """The memory budget (limits): True when one more worker fits."""
        return self.limits.fits_budget(self.workers, starting=self._spawning)

    def _offer(self, worker: WorkerProcess) -> None:
        """Give an idle worker to the first waiting task, or park it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._idle.append(worker)

    def _release(self, worker: WorkerProcess) -> None:
        if worker.state is not WorkerState.IDLE:
            return  # stopping or gone: its watcher takes care of it
        reason = self._recycle_reason(worker)
        if reason is not None:
            self.recycle(worker, reason)
        limit = self._max_tasks.get(worker)
        spent = limit is not None and worker.tasks_run >= limit
        if worker in self._retiring and (
            self._replacement_ready(worker) or self._retiring[worker] in RETIRE_AT_ONCE or spent
        ):
            self._retire(worker)
            return
        self._offer(worker)

    def _recycle_reason(self, worker: WorkerProcess) -> str | None:
        limit = self._max_tasks.get(worker)
        memory = self.limits.task_finished(worker, time.monotonic())
        if memory is not None:
            return memory
        # The successor is started a few tasks early, so that at the limit
        # itself the swap costs no warm capacity; the limit stays strict.
        if limit is not None and worker.tasks_run >= limit - max(1, limit // 5):
            return "max_tasks"
        return None

    # -- recycling ---------------------------------------------------------
    def recycle(self, worker: WorkerProcess, reason: str) -> None:
        """Replace ``worker``: start its successor first, retire it once that one is warm."""
        if worker in self._retiring or not worker.alive:
            return
        self._retiring[worker] = reason
        self._log.bind(pid=worker.pid).info("recycling worker ({})", reason)
        self._spawn_soon(name=f"replace-{worker.pid}", replacing=worker)

    def _replacement_ready(self, worker: WorkerProcess) -> bool:
        return worker in self._replaced

    def _retire(self, worker: WorkerProcess) -> None:
        reason = self._retiring.get(worker, "shutdown")
        if worker in self._idle:
            self._idle.remove(worker)
        self.bus.emit(ev.WorkerRecycled(namespace=self.ns.name, worker_pid=worker.pid, reason=reason))
        self._owner.spawn(worker.shutdown(grace=self.ns.kill_grace, reason=reason), name=f"retire-{worker.pid}")

    # -- spawning ----------------------------------------------------------
    def _spawn_soon(self, *, name: str, replacing: WorkerProcess | None = None) -> None:
        """Start a spawn in the background, counted at once: callers in the same
        loop turn must see it, or concurrent scale-ups overshoot max_workers."""
        self._spawning += 1
        self._owner.spawn(self._spawn(replacing=replacing, counted=True), name=name)

    async def _spawn(self, *, replacing: WorkerProcess | None = None, counted: bool = False) -> WorkerProcess | None:
        if not counted:
            self._spawning += 1
        # Read now: the predecessor may be gone (and forgotten) once we are warm.
        predecessor = self._retiring.get(replacing) if replacing is not None else None
        worker = WorkerProcess(self.ns, on_log=self._on_log, on_progress=self._on_progress)
        self.workers.append(worker)
        try:
            await worker.start()
        except WorkerStartError as exc:
            self._spawning -= 1
            self._start_failed(worker, exc)
            return None
        except BaseException:
            self._spawning -= 1
            raise
        self._spawning -= 1
        jitter = random.randint(0, self.ns.max_tasks_jitter) if self.ns.max_tasks_jitter else 0
        if self.ns.max_tasks_per_worker:
            self._max_tasks[worker] = self.ns.max_tasks_per_worker + jitter
        self.last_error = None
        if self.state is PoolState.DEGRADED:
            self.state = PoolState.OK
            self._log.info("namespace recovered")
        startup = (worker.ready_at or time.monotonic()) - worker.started_at
        self.bus.emit(ev.WorkerReady(namespace=self.ns.name, worker_pid=worker.pid, startup_seconds=startup,
                                     python=worker.hello.get("python")))
        self._owner.spawn(self._watch(worker), name=f"watch-{worker.pid}")
        if self.state in (PoolState.DRAINING, PoolState.STOPPED):
            await worker.shutdown(grace=self.ns.kill_grace, reason="shutdown")
            return None
        if replacing is not None:
            self._lineage[worker] = predecessor or "recycle"
        elif self._unreplaced:
            self._lineage[worker] = self._unreplaced.popleft()
        if replacing is not None and replacing.alive:
            self._replaced.add(replacing)
            # Only if parked: an idle worker outside _idle was just handed a
            # task; _release retires it after that task.
            if replacing in self._idle:
                self._retire(replacing)
        self._offer(worker)
        return worker

    def _start_failed(self, worker: WorkerProcess, exc: WorkerStartError) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self._failure_streak += 1
        delay = self._backoff()
        self._next_spawn_at = time.monotonic() + delay
        self.last_error = str(exc)
        self.restarts["start_failed"] += 1
        if self.state is not PoolState.DRAINING and self.state is not PoolState.STOPPED:
            self.state = PoolState.DEGRADED
        self._log.bind(pid=worker.pid).error("worker failed to start ({}); next try in {:.1f}s", exc, delay)
        self.bus.emit(ev.WorkerStartFailed(namespace=self.ns.name, reason=str(exc), retry_in=delay))
        if not self.live and not self._spawning:
            err = NamespaceUnavailable(f"namespace {self.ns.name} is degraded: {exc}")
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(err)
        self._wake.set()

    def _backoff(self) -> float:
        """Exponential in the failure streak, capped, with jitter; the first retry is immediate."""
        if self._failure_streak <= 1:
            return 0.0
        base = min(self.ns.respawn_backoff * 2 ** (self._failure_streak - 2), self.ns.respawn_backoff_max)
        return base * random.uniform(0.75, 1.0)

    async def _watch(self, worker: WorkerProcess) -> None:
        await worker.wait()
        if worker in self.workers:
            self.workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        replaced = self._retiring.pop(worker, None) is not None
        self._replaced.discard(worker)
        self._max_tasks.pop(worker, None)
        self.limits.forget(worker)
        self._lineage.pop(worker, None)
        reason = worker.stop_reason or "crash"
        if not replaced and reason not in ("idle", "shutdown", "reload"):
            self._unreplaced.append(reason)
        self.restarts[reason] += 1
        self.bus.emit(ev.WorkerExited(namespace=self.ns.name, worker_pid=worker.pid, reason=reason,
                                      exit_code=worker.exit_code, tasks_run=worker.tasks_run))
        if reason not in PLANNED_REASONS and self.state not in (PoolState.DRAINING, PoolState.STOPPED):
            self._failure_streak += 1
            self._next_spawn_at = time.monotonic() + self._backoff()
            self._log.bind(pid=worker.pid).warning(
                "worker exited ({}, {}) after {} tasks", reason, describe_exit(worker.exit_code), worker.tasks_run
            )
        self._wake.set()

    # -- maintenance -------------------------------------------------------
    async def _maintain(self) -> None:
        """Keep min_workers warm, ping idle workers, apply periodic policies."""
        last_ping = time.monotonic()
        tick = BUSY_TICK
        while True:
            await self._wake.wait(_on_grid(tick))
            self._wake.clear()
            if self.state in (PoolState.DRAINING, PoolState.STOPPED):
                return
            now = time.monotonic()
            missing = self.ns.min_workers - self._settled() - self._spawning
            if missing > 0 and now >= self._next_spawn_at:
                for _ in range(missing):
                    self._spawn_soon(name="respawn")
            elif self.waiting and self._can_grow():
                self._spawn_soon(name="scale-up")
            if now - last_ping >= self.ns.heartbeat_interval:
                last_ping = now
                self._heartbeat(now)
            self.tick(now)
            lim = self.ns.limits
            pending = missing > 0 or self._spawning or self.waiting or self._retiring
            tick = BUSY_TICK if pending or self.state is not PoolState.OK or lim.max_age or lim.idle_timeout \
                else min(IDLE_TICK, self.ns.heartbeat_interval)

    def tick(self, now: float) -> None:
        """Periodic policies without psutil: max age and idle scale-down."""
        active = [w for w in self.workers
                  if w.state in (WorkerState.IDLE, WorkerState.BUSY) and w not in self._retiring]
        surplus = len(active) - self.ns.min_workers
        for verdict in self.limits.policies(active, now, surplus=surplus):
            self._apply(verdict)

    async def _limits_loop(self) -> None:
        """Sample the workers' process trees (busy ones at ``sample_interval``) and act on limits."""
        lim = self.ns.limits
        # Busy workers are sampled every sample_interval only when a limit can
        # kill them mid-task; otherwise every worker is sampled once per
        # idle_interval, and a look a second is plenty (see IDLE_TICK).
        fast = lim.memory_hard_mb or lim.cpu_time_limit or lim.cpu_percent_limit
        period = min(lim.sample_interval, BUSY_TICK) if fast else min(self.limits.idle_interval, IDLE_TICK)
        while True:
            await asyncio.sleep(_on_grid(period))
            if self.state in (PoolState.DRAINING, PoolState.STOPPED):
                return
            for verdict in self.limits.sample(list(self.workers), time.monotonic()):
                self._apply(verdict)

    def _apply(self, verdict: Verdict) -> None:
        worker = verdict.worker
        task_id = worker.current_task.id if worker.current_task else None
        log = self._log.bind(pid=worker.pid, task_id=task_id)
        if verdict.action is Action.KILL:
            log.warning("killing worker ({}): {}", verdict.reason, verdict.detail)
            if worker.state is WorkerState.BUSY:  # read (and dropped) by execute()
                self._kill_detail[worker] = verdict.detail
            if worker in self._idle:
                self._idle.remove(worker)
            worker.kill(verdict.reason)
        elif verdict.action is Action.RETIRE:
            # Only a parked worker: an idle one not in _idle is being handed a task.
            if worker not in self._idle or worker in self._retiring:
                return
            log.info("retiring idle worker: {}", verdict.detail)
            self._retiring[worker] = verdict.reason
            self._retire(worker)
        else:
            if worker in self._retiring:
                return
            log.info("worker to be recycled ({}): {}", verdict.reason, verdict.detail)
            self.recycle(worker, verdict.reason)
            if verdict.reason in RETIRE_AT_ONCE and worker in self._idle:
                self._retire(worker)  # otherwise _release retires it after its task

    def recycle_reason(self, worker: WorkerProcess) -> str | None:
        """Why the worker is being recycled, else why its predecessor was (for status)."""
        return self._retiring.get(worker) or self._lineage.get(worker)

    def _heartbeat(self, now: float) -> None:
        for worker in list(self._idle):
            if worker.state is not WorkerState.IDLE:
                continue
            silent = now - worker.last_pong
            if silent > self.ns.heartbeat_interval + self.ns.heartbeat_timeout:
                self._log.bind(pid=worker.pid).error("idle worker silent for {:.1f}s; killing it", silent)
                self._idle.remove(worker)
                worker.kill("heartbeat")
                continue
            try:
                worker.ping()
            except WorkerLost:
                pass

    # -- worker callbacks ----------------------------------------------------
    def _on_log(self, worker: WorkerProcess, level: str, message: str, task_id: str | None) -> None:
        self.bus.emit(ev.WorkerLog(namespace=self.ns.name, worker_pid=worker.pid, level=level, message=message,
                                   task_id=task_id))

    def _on_progress(self, worker: WorkerProcess, task_id: str, progress: int, message: str | None) -> None:
        self.bus.emit(ev.TaskProgress(namespace=self.ns.name, task_id=task_id, progress=progress, message=message,
                                      worker_pid=worker.pid))
