"""How big a run is: the tiny smoke test, ``--quick`` (~2 min) and the full run (~8-10 min on 2 cores)."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Profile:
    name: str
    #: Interleaved rounds: every contender runs once per round, in a rotated
    #: order, so a burst of load from elsewhere lands on all of them.
    rounds: int
    throughput_rounds: int
    warmup: int
    #: Round trips per payload per round, warm contenders.
    latency_samples: dict[str, int]
    #: Round trips per payload per round, spawn-per-task contenders.
    spawn_samples: dict[str, int]
    throughput_tasks: int
    oneshot_tasks: int
    pool_sizes: tuple[int, ...]
    #: Pool sizes that also get msgpack rows (json is the default codec).
    msgpack_pool_sizes: tuple[int, ...]
    scale_namespaces: tuple[int, ...]
    #: Seconds of idle CPU measurement.
    scale_window: float
    scale_samples: int
    limits_workers: int
    limits_window: float
    limits_tasks: int
    #: [namespaces, workers per namespace] of each cold start.
    cold_layouts: tuple[tuple[int, int], ...]
    sources: tuple[str, ...]
    source_tasks: int
    source_samples: int


PROFILES = {
    "tiny": Profile(
        name="tiny", rounds=1, throughput_rounds=1, warmup=20,
        latency_samples={"noop": 200, "100B": 50, "64KiB": 20, "1MiB": 4},
        spawn_samples={"noop": 2},
        throughput_tasks=300, oneshot_tasks=4, pool_sizes=(2,), msgpack_pool_sizes=(),
        scale_namespaces=(2,), scale_window=0.5, scale_samples=40,
        limits_workers=2, limits_window=0.3, limits_tasks=20,
        cold_layouts=((1, 1),),
        sources=("embedded",), source_tasks=30, source_samples=2,
    ),
    "quick": Profile(
        name="quick", rounds=2, throughput_rounds=1, warmup=50,
        latency_samples={"noop": 1000, "100B": 300, "64KiB": 100, "1MiB": 12},
        spawn_samples={"noop": 6, "100B": 2, "64KiB": 2, "1MiB": 2},
        throughput_tasks=1500, oneshot_tasks=12, pool_sizes=(1, 2, 4, 8), msgpack_pool_sizes=(2,),
        scale_namespaces=(1, 10, 50), scale_window=2.5, scale_samples=200,
        limits_workers=50, limits_window=1.5, limits_tasks=100,
        cold_layouts=((1, 1), (1, 1), (1, 1), (1, 8)),
        sources=("embedded", "redis", "amqp"), source_tasks=300, source_samples=8,
    ),
    "full": Profile(
        name="full", rounds=6, throughput_rounds=4, warmup=100,
        latency_samples={"noop": 3000, "100B": 1000, "64KiB": 300, "1MiB": 40},
        spawn_samples={"noop": 15, "100B": 8, "64KiB": 8, "1MiB": 8},
        throughput_tasks=5000, oneshot_tasks=30, pool_sizes=(1, 2, 4, 8), msgpack_pool_sizes=(1, 2, 4, 8),
        scale_namespaces=(1, 10, 50), scale_window=10.0, scale_samples=1000,
        limits_workers=50, limits_window=5.0, limits_tasks=500,
        cold_layouts=((1, 1), (1, 1), (1, 1), (1, 1), (1, 1), (1, 8), (10, 1)),
        sources=("embedded", "redis", "amqp"), source_tasks=2000, source_samples=25,
    ),
}
