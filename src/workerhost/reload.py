"""Reload without downtime: re-read the config and apply the difference.

SIGHUP (or ``workerhost-supervisor reload``) makes the running supervisor::

    load the file ──invalid──▶ refused: logged, reported, the running config stays
        │
    diff against the running config, per namespace:
        added      a new pool starts ───────────────────────┐
        replaced   a new pool starts (workers warm) ────────┤  all must start a worker,
                   -- venv, entrypoint, env, codec, limits,  │  else the whole reload is
                      mode, a smaller max_workers, or the    │  refused and the new pools
                      venv re-provisioned since              │  are stopped again
        adjusted   the running pool takes the new settings  │
                   (pool size, timeouts, retries, task types)│
        removed    ─────────────────────────────────────────┘
        │
    commit in one step (no await): routes, pools, config swapped
        │
    old pools of replaced and removed namespaces drain in the background:
    their queued and running tasks finish on their old workers (up to
    ``shutdown.graceful_timeout``), then they stop.

In-flight tasks are never dropped: a task already inside an old pool
finishes there; a task that starts after the commit goes to the new pool.
Changes to ``task_manager``, ``monitoring``, ``logging`` and ``observers``
need a restart; a reload reports them and leaves them unapplied.

The ``reload`` command finds the supervisor through the pid file ``start``
writes (``.workerhost/supervisor.pid`` next to the config unless
``--pid-file``), sends SIGHUP and waits for the outcome the supervisor
writes next to it (``supervisor.pid.reload.json``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from loguru import logger

from ._tasks import TaskOwner
from .config import Config, NamespaceConfig, load_config
from .errors import ConfigError
from .oneshot import OneshotPool
from .pool import Pool, PoolState
from .provision import read_stamp
from .supervisor import Supervisor, make_pool

#: Namespace settings a running worker was started with: a change needs new workers.
WORKER_FIELDS = ("python", "project_path", "module", "function", "mode", "command", "codec", "max_frame_bytes",
                 "env", "env_passthrough", "limits", "venv")
#: Top-level sections read once at start (``shutdown``: the stop timeout of the running process).
RESTART_FIELDS = ("task_manager", "monitoring", "logging", "observers", "shutdown")
#: The pid file ``start`` writes unless told otherwise (relative to the config file).
DEFAULT_PID_FILE = Path(".workerhost") / "supervisor.pid"

AnyPool = Pool | OneshotPool


# -- the difference ------------------------------------------------------------
@attrs.frozen(kw_only=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: namespace -> why its workers are replaced.
    replaced: dict[str, str] = attrs.field(factory=dict)
    adjusted: tuple[str, ...] = ()
    #: The route (fallback order) of a task type served before and after changed.
    routes_changed: bool = False
    #: Changed sections that only a restart applies.
    needs_restart: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.replaced or self.adjusted or self.routes_changed)

    def summary(self) -> str:
        parts = []
        if self.added:
            parts.append(f"added {', '.join(self.added)}")
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        if self.replaced:
            parts.append("replaced " + ", ".join(f"{n} ({why})" for n, why in self.replaced.items()))
        if self.adjusted:
            parts.append(f"adjusted {', '.join(self.adjusted)}")
        if self.routes_changed:
            parts.append("routes changed")
        if self.needs_restart:
            parts.append(f"not applied until a restart: {', '.join(self.needs_restart)}")
        return "; ".join(parts) or "no changes"


def diff_configs(old: Config, new: Config, *, reprovisioned: frozenset[str] = frozenset()) -> ConfigDiff:
    """What applying ``new`` over ``old`` does to each namespace."""
    old_ns = {ns.name: ns for ns in old.namespaces}
    new_ns = {ns.name: ns for ns in new.namespaces}
    replaced: dict[str, str] = {}
    adjusted: list[str] = []
    for name in (n for n in new_ns if n in old_ns):
        why = _replace_reason(old_ns[name], new_ns[name])
        if why is None and name in reprovisioned:
            why = "venv re-provisioned"
        if why is not None:
            replaced[name] = why
        elif old_ns[name] != new_ns[name]:
            adjusted.append(name)
    return ConfigDiff(
        added=tuple(n for n in new_ns if n not in old_ns),
        removed=tuple(n for n in old_ns if n not in new_ns),
        replaced=replaced, adjusted=tuple(adjusted),
        routes_changed=any(old.routes[t] != r for t, r in new.routes.items() if t in old.routes),
        needs_restart=tuple(f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)),
    )


def _replace_reason(old: NamespaceConfig, new: NamespaceConfig) -> str | None:
    changed = [f for f in WORKER_FIELDS if getattr(old, f) != getattr(new, f)]
    if changed:
        return ", ".join(changed) + " changed"
    if new.mode == "oneshot" and old != new:
        return "settings changed"  # a oneshot pool sizes its semaphore once
    if new.max_workers < old.max_workers:
        return "max_workers lowered"  # a running pool does not shed surplus workers
    return None


# -- applying it ---------------------------------------------------------------
@attrs.frozen(kw_only=True)
class ReloadOutcome:
    ok: bool
    summary: str = ""
    error: str | None = None
    #: Counts reloads of this supervisor; the ``reload`` command waits for it to move.
    generation: int = 0
    pid: int = attrs.field(factory=os.getpid)
    at: float = attrs.field(factory=time.time)

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


class Reloader:
    """Applies new configs to a running :class:`Supervisor`, one at a time."""

    def __init__(self, supervisor: Supervisor, *, on_change: Callable[[], None] | None = None) -> None:
        self.supervisor = supervisor
        #: Called after a commit, e.g. so the dispatcher claims for added namespaces.
        self.on_change = on_change
        self.generation = 0
        self._lock = asyncio.Lock()
        self._owner = TaskOwner("reload")
        self._draining: set[AnyPool] = set()
        self._stamps = {ns.name: _stamp_digest(ns) for ns in supervisor.config.namespaces}

    async def reload(self, path: str | os.PathLike[str] | None = None) -> ReloadOutcome:
        """Re-read the config file (the running one's path by default) and apply it."""
        target = path if path is not None else self.supervisor.config.path
        if target is None:
            raise ValueError("the running config has no file to re-read")
        async with self._lock:
            self.generation += 1
            try:
                new = load_config(target)
            except ConfigError as exc:
                logger.error("reload refused, the running config stays: {}", exc)
                return ReloadOutcome(ok=False, error=str(exc), generation=self.generation)
            return await self._apply(new)

    async def apply(self, new: Config) -> ReloadOutcome:
        """Apply an already loaded config."""
        async with self._lock:
            self.generation += 1
            return await self._apply(new)

    async def _apply(self, new: Config) -> ReloadOutcome:
        sup = self.supervisor
        stamps = {ns.name: _stamp_digest(ns) for ns in new.namespaces}
        reprovisioned = frozenset(n for n, d in stamps.items() if n in self._stamps and d != self._stamps[n])
        diff = diff_configs(sup.config, new, reprovisioned=reprovisioned)
        starting = {name: make_pool(new.namespace(name), bus=sup.bus) for name in (*diff.added, *diff.replaced)}
        if starting:
            logger.info("reload: starting {}", ", ".join(starting))
        error = await self._start_all(starting)
        if error is not None:
            logger.error("reload refused, the running config stays: {}", error)
            return ReloadOutcome(ok=False, error=error, generation=self.generation)
        # The commit: no await from here to the end of the loop, so no task sees half of it.
        retired = [sup.pools[n] for n in (*diff.replaced, *diff.removed)]
        pools: dict[str, AnyPool] = {}
        for ns in new.namespaces:
            pool = starting.get(ns.name) or sup.pools[ns.name]
            if ns.name in diff.adjusted:
                pool.ns = ns
            pools[ns.name] = pool
        sup.config = new
        sup.pools.clear()
        sup.pools.update(pools)
        self._stamps = stamps
        for pool in retired:
            self._draining.add(pool)
            self._owner.spawn(self._drain(pool), name=f"drain-{pool.ns.name}")
        if self.on_change is not None:
            self.on_change()
        outcome = ReloadOutcome(ok=True, summary=diff.summary(), generation=self.generation)
        logger.info("reload applied: {}", outcome.summary)
        if diff.needs_restart:
            logger.warning("reload: {} changed; those take effect after a restart", ", ".join(diff.needs_restart))
        return outcome

    async def _start_all(self, pools: dict[str, AnyPool]) -> str | None:
        """Start the new pools; if any cannot start a single worker, stop them all and say why."""
        try:
            await asyncio.gather(*(p.start() for p in pools.values()))
        except BaseException:
            await asyncio.gather(*(p.close(timeout=0, reason="reload") for p in pools.values()))
            raise
        broken = [(n, p) for n, p in pools.items()
                  if isinstance(p, Pool) and p.state is PoolState.DEGRADED and not p.live]
        if not broken:
            return None
        # Read the reasons first: stopping the pools cuts their respawns short, with another error.
        reason = "; ".join(f"namespace {n!r} cannot start a worker: {p.last_error}" for n, p in broken)
        await asyncio.gather(*(p.close(timeout=0, reason="reload") for p in pools.values()))
        return reason

    async def _drain(self, pool: AnyPool) -> None:
        """Let an old pool's queued and running tasks finish, then stop it."""
        timeout = self.supervisor.config.shutdown.graceful_timeout
        deadline = time.monotonic() + timeout
        try:
            while (pool.busy or pool.waiting) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await pool.close(timeout=max(0.0, deadline - time.monotonic()), reason="reload")
            logger.bind(namespace=pool.ns.name).info("old pool drained and stopped")
        finally:
            self._draining.discard(pool)

    @property
    def draining(self) -> int:
        return len(self._draining)

    async def aclose(self, *, timeout: float = 0.0) -> None:
        """Stop draining pools now (shutdown): their tasks were already handed back."""
        pools = list(self._draining)
        await self._owner.aclose()
        await asyncio.gather(*(p.close(timeout=timeout, reason="shutdown") for p in pools))
        self._draining.clear()


def _stamp_digest(ns: NamespaceConfig) -> str | None:
    """The provision stamp of the namespace's venv: a new one means new packages on disk."""
    if ns.venv is None:
        return None
    stamp = read_stamp(ns.venv.path)
    return str(stamp.get("digest")) if stamp else None


# -- the pid file and the reload status next to it ---------------------------------
class ReloadRequestError(Exception):
    """The running supervisor could not be found or did not answer."""


def default_pid_file(config_path: str | os.PathLike[str]) -> Path:
    return Path(config_path).resolve().parent / DEFAULT_PID_FILE


class PidFile:
    """``start`` writes its pid here; ``reload`` reads it; the outcome of each reload is written beside it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.status_path = self.path.with_name(self.path.name + ".reload.json")

    def acquire(self) -> None:
        """Write our pid; refuse when a live supervisor already holds this pid file."""
        other = self.read()
        if other is not None and other != os.getpid() and _is_supervisor(other):
            raise ConfigError(f"another supervisor (pid {other}) uses this pid file; stop it, or give each "
                              "supervisor its own --pid-file", file=str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
        os.replace(tmp, self.path)
        self.status_path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the files if they are still ours (a successor may have taken the path)."""
        if self.read() == os.getpid():
            self.path.unlink(missing_ok=True)
            self.status_path.unlink(missing_ok=True)

    def read(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def write_outcome(self, outcome: ReloadOutcome) -> None:
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        tmp.write_text(json.dumps(outcome.to_dict()) + "\n", encoding="utf-8")
        os.replace(tmp, self.status_path)

    def read_outcome(self) -> ReloadOutcome | None:
        try:
            doc = json.loads(self.status_path.read_text(encoding="utf-8"))
            return ReloadOutcome(**doc)
        except (OSError, ValueError, TypeError):
            return None


def request_reload(
    config_path: str | os.PathLike[str], *, pid_file: str | os.PathLike[str] | None = None, timeout: float = 60.0,
) -> ReloadOutcome | None:
    """SIGHUP the supervisor named by the pid file; wait up to ``timeout`` s for its outcome (None: not waited)."""
    pf = PidFile(pid_file if pid_file is not None else default_pid_file(config_path))
    pid = pf.read()
    if pid is None:
        raise ReloadRequestError(f"no running supervisor: cannot read a pid from {pf.path} "
                                 "(is `workerhost-supervisor start` running with this config or --pid-file?)")
    if not _is_supervisor(pid):
        raise ReloadRequestError(f"pid {pid} from {pf.path} is not a running supervisor (a stale pid file?)")
    before = pf.read_outcome()
    last = before.generation if before is not None and before.pid == pid else 0
    os.kill(pid, signal.SIGHUP)
    if timeout <= 0:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = pf.read_outcome()
        if outcome is not None and outcome.pid == pid and outcome.generation > last:
            return outcome
        if not _alive(pid):
            raise ReloadRequestError(f"the supervisor (pid {pid}) exited during the reload")
        time.sleep(0.05)
    raise ReloadRequestError(f"the supervisor (pid {pid}) did not report the reload within {timeout:.0f}s; "
                             "see its log")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_supervisor(pid: int) -> bool:
    """A live process that looks like ours (guards against a stale pid file naming a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: trust the pid file
    return b"workerhost" in cmdline
