"""The dispatch loop: drives a :class:`~workerhost.supervisor.Supervisor` from a task source.

One claim loop per namespace asks the source for at most as many tasks as
the namespace's pool can start now, plus a small prefetch, so a busy
namespace never starves another and nothing sits claimed behind a full
pool. Each claimed task is one owned asyncio task::

    claim ─▶ Supervisor.attempt ─┬─ ok ──────────────────────▶ source.complete
                                 └─ failed ─▶ Supervisor.decide
                                      ├─ retry, durable source ─▶ source.retry (the delay lives in the source)
                                      ├─ retry, other source ───▶ wait the delay holding the claim, try again
                                      └─ give up ───────────────▶ source.fail (dead-letter)

Progress events of a held task are forwarded to ``source.progress``
(coalesced: only the latest value is sent). Sources that lease their
claims (:class:`~workerhost.sources.base.RenewsLeases`) are renewed while
tasks run. An idle claim loop polls with a growing interval, or, where the
source can tell when tasks arrive (:class:`~workerhost.sources.base.WaitsForTasks`),
waits for that. A source that cannot be reached is logged and retried under a
capped, jittered backoff; it never takes the supervisor down.

``stop(graceful_timeout)`` stops claiming, gives back at once every task
that has not reached a worker, lets running tasks finish within the
timeout and gives back (``source.release``) whatever is still unfinished.
Close the supervisor after ``stop``: a task cut off by the timeout still
holds its worker.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from loguru import logger

from . import events as ev
from ._idle import wait_for_tasks
from ._tasks import TaskOwner
from .errors import SourceError, SourceFatal, SupervisorClosed
from .pool import PoolState
from .records import Outcome, TaskError
from .sources.base import Claimed, RenewsLeases, TaskSource, WaitsForTasks
from .supervisor import Supervisor

#: Seconds an idle claim loop pauses when the source said "tasks" and the
#: claim that followed found none, before it waits on the source again: a
#: source that keeps saying so then costs ~20 claims a second, no more.
VAIN_RING_PAUSE = 0.05


class DispatchState(enum.Enum):
    #: Built, ``start`` not called yet.
    NEW = "new"
    #: Connecting to the source, or claiming and running tasks.
    RUNNING = "running"
    #: ``stop`` called: no more claims; in-flight tasks finish or are given back.
    STOPPING = "stopping"
    #: Everything given back; the source is closed.
    STOPPED = "stopped"
    #: The source refused us for good (authentication failed); no more claims.
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class DispatchOptions:
    #: Tasks claimed per namespace beyond its free worker slots, so a freed
    #: worker finds its next task waiting instead of waiting for a poll.
    prefetch: int = 1
    #: First idle poll delay after an empty claim; doubles up to the cap.
    poll_interval: float = 0.05
    poll_max_interval: float = 2.0
    #: Backoff after a source error: starts here, doubles, capped.
    error_backoff: float = 0.5
    error_backoff_max: float = 30.0
    #: Tries of one complete/retry/fail report before the task is left to
    #: its lease (the source hands it out again: at-least-once).
    report_tries: int = 5
    #: Extra seconds a task whose outcome is being reported gets after the
    #: graceful timeout, so a finished task is not given back to run twice.
    report_grace: float = 5.0


@attrs.define(eq=False)
class _Held:
    """A task this dispatcher holds, from its claim until it is handed back."""

    claimed: Claimed
    #: The namespace whose claim loop (and capacity) it counts against.
    group: str
    runner: asyncio.Task[Any] | None = None
    #: Between claim and the end of its try: it occupies a slot or a prefetch place.
    active: bool = True
    #: A worker took it (TaskStarted seen for this try).
    started: bool = False
    #: Its outcome is known and being reported to the source.
    reporting: bool = False
    #: Given back by ``stop``; the runner must not report anything more.
    released: bool = False
    progress: tuple[int, str | None] | None = None
    progress_sender: asyncio.Task[Any] | None = None


class Dispatcher:
    def __init__(self, supervisor: Supervisor, source: TaskSource, *, options: DispatchOptions | None = None) -> None:
        self.supervisor = supervisor
        self.source = source
        self.options = options or DispatchOptions()
        self.state = DispatchState.NEW
        #: Why the dispatcher failed (FAILED state), for status and the CLI.
        self.failure: str | None = None
        self.last_source_error: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("claimed", "completed", "retried", "failed", "released", "report_errors"), 0)
        self._owner = TaskOwner(f"dispatch:{source.kind}")
        self._held: dict[str, _Held] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._stopped = asyncio.Event()
        self._main: asyncio.Task[Any] | None = None
        self._claim_loops: list[asyncio.Task[Any]] = []
        self._deadline: float | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._error_streak = 0
        self._log = logger.bind(source=source.kind)

    # -- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        """Connect (retrying in the background) and start one claim loop per namespace."""
        if self.state is not DispatchState.NEW:
            raise RuntimeError(f"dispatcher cannot start: it is {self.state.value}")
        self.state = DispatchState.RUNNING
        self._unsubscribe = self.supervisor.bus.subscribe(self._observe)
        self._main = self._owner.spawn(self._run(), name="main")

    async def wait(self) -> None:
        """Return when the dispatcher stopped or failed."""
        await self._done.wait()

    @property
    def held(self) -> int:
        return len(self._held)

    async def stop(self, graceful_timeout: float = 30.0) -> None:
        """Stop claiming; let running tasks finish within the timeout; give back the rest.

        A second call (a second signal) shortens the deadline; ``stop(0)``
        gives everything back now.
        """
        deadline = time.monotonic() + max(0.0, graceful_timeout)
        if self._deadline is not None:
            self._deadline = min(self._deadline, deadline)
            self._changed.set()
            await self._stopped.wait()
            return
        self._deadline = deadline
        if self.state is not DispatchState.FAILED:
            self.state = DispatchState.STOPPING
        self._stopping.set()
        for event in self._wake.values():
            event.set()
        await self._stop_claiming()
        # Tasks still waiting for a worker go back at once: nobody started them.
        await asyncio.gather(*(self._give_back(h) for h in list(self._held.values())
                               if not h.started and not h.reporting))
        while self._held and time.monotonic() < self._deadline:
            await self._wait_changed(self._deadline - time.monotonic())
        grace_end = time.monotonic() + self.options.report_grace
        while any(h.reporting for h in self._held.values()) and time.monotonic() < grace_end:
            await self._wait_changed(grace_end - time.monotonic())
        if self._held:
            self._log.warning("graceful timeout over: giving back {} unfinished task(s)", len(self._held))
        await asyncio.gather(*(self._give_back(h) for h in list(self._held.values())))
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self._owner.aclose()
        try:
            await self.source.close()
        except Exception as exc:  # closing is best effort; the tasks are already given back
            self._log.warning("closing the {} source failed: {!r}", self.source.kind, exc)
        if self.state is not DispatchState.FAILED:
            self.state = DispatchState.STOPPED
        self._stopped.set()
        self._done.set()

    async def _stop_claiming(self) -> None:
        """Let the claim loops see the stop (a claim in flight lands and is given back), then end them."""
        tasks = [t for t in (self._main, *self._claim_loops) if t is not None and not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _wait_changed(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            pass

    # -- the main task -------------------------------------------------
    async def _run(self) -> None:
        if not await self._connect():
            return
        if isinstance(self.source, RenewsLeases):
            # Runs until the owner closes: leases are renewed through a graceful stop too.
            self._owner.spawn(self._renew_loop(self.source), name="renew")
        for name in self.supervisor.pools:
            self._wake.setdefault(name, asyncio.Event())
            self._claim_loops.append(self._owner.spawn(self._claim_loop(name), name=f"claim-{name}"))

    def add_namespaces(self) -> None:
        """After a reload: claim for added namespaces, and at the new sizes (a removed one's loop idles)."""
        if not self._wake or self._stopping.is_set():
            return  # not connected yet: _run starts a loop for every pool it finds then
        for name in self.supervisor.pools:
            if name not in self._wake:
                self._wake[name] = asyncio.Event()
                self._claim_loops.append(self._owner.spawn(self._claim_loop(name), name=f"claim-{name}"))
        for event in self._wake.values():
            event.set()

    async def _connect(self) -> bool:
        while not self._stopping.is_set():
            try:
                await self.source.connect()
            except SourceFatal as exc:
                self._fail(exc)
                return False
            except SourceError as exc:
                await self._sleep(self._source_trouble("connect", exc))
                continue
            self._source_ok()
            return True
        return False

    def _fail(self, exc: SourceFatal) -> None:
        self.failure = str(exc)
        self.state = DispatchState.FAILED
        self._log.error("{} source stopped: {}", self.source.kind, exc)
        self._stopping.set()
        for event in self._wake.values():
            event.set()
        self._done.set()

    # -- claiming ------------------------------------------------------
    async def _claim_loop(self, ns: str) -> None:
        wake = self._wake[ns]
        idle = self.options.poll_interval
        # After an empty claim, a source that can tell when tasks arrive is
        # waited on; if its word was followed by another empty claim, the
        # next wait is a short sleep instead, so a source that keeps saying
        # "maybe" costs a claim per VAIN_RING_PAUSE, no hot loop.
        waits = isinstance(self.source, WaitsForTasks)
        rang_in_vain = False
        while not self._stopping.is_set():
            types = self._claim_types(ns)
            room = self._room(ns) if types else 0
            if room <= 0:
                await self._pause(wake, self.options.poll_max_interval)
                continue
            try:
                batch = await self.source.claim(types, room)
            except SourceFatal as exc:
                self._fail(exc)
                return
            except SourceError as exc:
                await self._sleep(self._source_trouble("claim", exc))
                continue
            self._source_ok()
            if not batch:
                rang: bool | None = None
                if waits and not rang_in_vain:
                    assert isinstance(self.source, WaitsForTasks)
                    rang = await wait_for_tasks(self.source, types, timeout=self.options.poll_max_interval,
                                                stopping=self._stopping, wake=wake)
                if rang is None:
                    # Polling (the source cannot wait); or a pause after the
                    # source's word brought nothing (a ring for a task another
                    # claim took): short, so a task sent meanwhile waits no
                    # longer than VAIN_RING_PAUSE.
                    pause = min(idle, VAIN_RING_PAUSE) if rang_in_vain else idle
                    await self._sleep(pause * random.uniform(0.5, 1.0))
                    idle = min(idle * 2, self.options.poll_max_interval)
                rang_in_vain = bool(rang)
                continue
            idle = self.options.poll_interval
            rang_in_vain = False
            for claimed in batch:
                self._accept(ns, claimed)

    def _claim_types(self, ns: str) -> list[str]:
        """Task types this namespace claims: those whose first serving namespace it is."""
        out = []
        for task_type, route in self.supervisor.config.routes.items():
            if not route:
                continue
            target = next((name for name in route if self._serving(name)), route[0])
            if target == ns:
                out.append(task_type)
        return out

    def _serving(self, ns: str) -> bool:
        pool = self.supervisor.pools.get(ns)
        if pool is None or pool.state in (PoolState.DRAINING, PoolState.STOPPED):
            return False
        return not (pool.state is PoolState.DEGRADED and not pool.live)

    def _room(self, ns: str) -> int:
        """How many tasks this namespace may claim now (free slots + prefetch, minus what it holds)."""
        if not self._serving(ns):
            return 0
        prefetch = self.options.prefetch
        active = sum(1 for h in self._held.values() if h.group == ns and h.active)
        max_workers = self.supervisor.config.namespace(ns).max_workers
        return max(0, min(max_workers + prefetch - active, self.supervisor.free_slots(ns) + prefetch))

    def _accept(self, ns: str, claimed: Claimed) -> None:
        task = claimed.task
        self.counters["claimed"] += 1
        held = _Held(claimed=claimed, group=ns)
        if self._stopping.is_set():
            # Claimed while stop() was underway: hand it straight back.
            self._owner.spawn(self._give_back(held), name=f"release-{task.id}")
            return
        self._held[task.id] = held
        self.supervisor.bus.emit(ev.TaskReceived(task_id=task.id, task_type=task.type))
        held.runner = self._owner.spawn(self._drive(held), name=f"task-{task.id}")

    # -- running one task ------------------------------------------------
    async def _drive(self, held: _Held) -> None:
        try:
            await self._attempts(held)
        finally:
            if self._held.get(held.claimed.task.id) is held:
                del self._held[held.claimed.task.id]
            self._changed.set()

    async def _attempts(self, held: _Held) -> None:
        claimed = held.claimed
        while True:
            task = claimed.task
            held.active, held.started = True, False
            try:
                outcome = await self.supervisor.attempt(task)
            except SupervisorClosed:
                await self._give_back(held)
                return
            finally:
                held.active = False
                self._wake_group(held.group)
            if held.released:
                return
            held.reporting = True
            await self._flush_progress(held)
            if outcome.ok:
                try:
                    await self._report(held, "complete",
                                       functools.partial(self.source.complete, claimed, outcome.result))
                except (TypeError, ValueError) as exc:
                    # The source cannot store this result (a msgpack worker's bytes in a
                    # JSON store): no retry can help, the task fails with that reason.
                    outcome = attrs.evolve(outcome, result=None, error=TaskError(
                        type="ResultNotSerializable", retry_possible=False,
                        message=f"the {self.source.kind} source cannot store the result: {exc}"))
                    held.reporting = False
                    if await self._after_failure(held, outcome):
                        return
                    continue
                self.supervisor.report_completed(task, outcome)
                self.counters["completed"] += 1
                return
            if await self._after_failure(held, outcome):
                return
            held.reporting = False

    async def _after_failure(self, held: _Held, outcome: Outcome) -> bool:
        """Report a failed try; True when the task is settled, False to try it again here."""
        claimed, task = held.claimed, held.claimed.task
        assert outcome.error is not None
        error = outcome.error
        decision = self.supervisor.decide(task, outcome)
        if not decision.retry or decision.next_task is None:
            self.supervisor.report_failed(task, outcome)
            self.counters["failed"] += 1
            await self._report(held, "fail", functools.partial(self.source.fail, claimed, error))
            return True
        self.supervisor.report_retry(task, outcome, decision)
        self.counters["retried"] += 1
        next_task = decision.next_task
        if self.source.durable_retries:
            await self._report(held, "retry",
                               functools.partial(self.source.retry, claimed, next_task, decision.delay, error))
            # An idle claim loop waiting on the source learns of the retry's due time.
            self._wake_group(held.group)
            return True
        # The source cannot hold a delayed retry: wait here, holding the claim but no worker.
        held.reporting = False
        if await self._sleep(decision.delay):
            await self._give_back(held)
            return True
        claimed.task = next_task
        return False

    async def _report(self, held: _Held, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """Tell the source a task's fate, retrying a source that is away for a while."""
        task_id = held.claimed.task.id
        for n in range(1, self.options.report_tries + 1):
            try:
                await call()
                return
            except SourceFatal as exc:
                self._fail(exc)
                break
            except SourceError as exc:
                if n == self.options.report_tries:
                    break
                self._log.bind(task_id=task_id).warning("{} report failed ({}); trying again", what, exc)
                await asyncio.sleep(_jittered(self.options.error_backoff * 2 ** (n - 1),
                                              self.options.error_backoff_max))
        self.counters["report_errors"] += 1
        self._log.bind(task_id=task_id).error(
            "could not report {} to the {} source; it will be handed out again when its claim expires",
            what, self.source.kind)

    async def _give_back(self, held: _Held) -> None:
        """Release a task untouched (shutdown); it will be handed out again."""
        if held.released:
            return
        held.released = True
        runner = held.runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if held.progress_sender is not None:
            held.progress_sender.cancel()
        self._held.pop(held.claimed.task.id, None)
        self.counters["released"] += 1
        try:
            await self.source.release(held.claimed)
        except SourceError as exc:
            self._log.bind(task_id=held.claimed.task.id).warning(
                "could not release the task ({}); it goes back when its claim expires", exc)
        self._changed.set()

    # -- progress and leases ---------------------------------------------
    def _observe(self, event: ev.Event) -> None:
        if isinstance(event, ev.TaskStarted):
            held = self._held.get(event.task_id)
            if held is not None:
                held.started = True
        elif isinstance(event, ev.TaskProgress):
            held = self._held.get(event.task_id)
            if held is None or held.released:
                return
            held.progress = (event.progress, event.message)
            if held.progress_sender is None or held.progress_sender.done():
                held.progress_sender = self._owner.spawn(self._send_progress(held),
                                                         name=f"progress-{event.task_id}")

    async def _send_progress(self, held: _Held) -> None:
        while held.progress is not None and not held.released:
            percent, message = held.progress
            held.progress = None
            try:
                await self.source.progress(held.claimed, percent, message)
            except SourceError as exc:
                # Progress is advisory: a lost update is not worth holding the task for.
                self._log.bind(task_id=held.claimed.task.id).debug("progress report failed: {}", exc)

    async def _flush_progress(self, held: _Held) -> None:
        sender = held.progress_sender
        if sender is not None and not sender.done():
            await asyncio.wait({sender}, timeout=self.options.report_grace)

    async def _renew_loop(self, source: RenewsLeases) -> None:
        while True:
            await asyncio.sleep(source.renew_interval)
            claims = [h.claimed for h in self._held.values() if not h.released]
            if not claims:
                continue
            try:
                await source.renew(claims)
            except SourceFatal as exc:
                self._fail(exc)
            except SourceError as exc:
                self._log.warning("lease renewal failed: {}", exc)

    # -- waiting and backing off ---------------------------------------------
    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True if stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            pass
        return self._stopping.is_set()

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _wake_group(self, ns: str) -> None:
        event = self._wake.get(ns)
        if event is not None:
            event.set()

    def _source_trouble(self, what: str, exc: SourceError) -> float:
        self._error_streak += 1
        delay = _jittered(self.options.error_backoff * 2 ** min(self._error_streak - 1, 16),
                          self.options.error_backoff_max)
        message = str(exc)
        if message != self.last_source_error or self._error_streak == 1:
            self._log.warning("{} source: {} failed: {} (next try in {:.1f}s)", self.source.kind, what, exc, delay)
        self.last_source_error = message
        return delay

    def _source_ok(self) -> None:
        if self._error_streak:
            self._log.info("{} source reachable again", self.source.kind)
        self._error_streak = 0
        self.last_source_error = None

    # -- status ----------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "source": self.source.kind,
            "state": self.state.value,
            "failure": self.failure,
            "last_source_error": self.last_source_error,
            "held": len(self._held),
            **self.counters,
        }


def _jittered(base: float, cap: float) -> float:
    return min(base, cap) * random.uniform(0.5, 1.0)
