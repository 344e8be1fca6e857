"""Thread safety: several threads calling ops at once, each forcing a different backend.

Two trivial CPU backends (``fake_a``, ``fake_b``) are registered for the test; they delegate
to the reference implementation and record which thread called them.  Threads forcing
``fake_a``, ``fake_b`` or ``reference`` and threads forcing nothing run together while another
thread keeps dropping the caches; every call must run on its own thread's backend, give the
reference's result, and the decision cache must only ever map a forced name to that backend.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gdn_dispatch as gdn
from gdn_dispatch import dispatch, registry
from gdn_dispatch.registry import OPS, Backend, OpSupport

ITERATIONS = 30


class _RecordingBackend(Backend):
    """A CPU backend serving every op by delegating to the reference; records its callers."""

    priority = -10
    vendors = frozenset({"cpu"})
    description = "test double"
    support = {op: OpSupport(vendors=frozenset({"cpu"}), bf16_needs_hardware=False)
               for op in OPS}

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.calls: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def _load(self, op: str) -> Callable[..., Any]:
        inner = registry.get_backend("reference").impl(op)

        def run(*args: Any, meta: Any) -> Any:
            with self._count_lock:
                self.calls[threading.current_thread().name] += 1
            return inner(*args, meta=meta)

        return run


def _calls() -> list[tuple[str, Callable[[], Any]]]:
    """A few ops with fixed inputs (a pool op included: each call gets its own pool)."""
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = r(4, 16)
    A_log, a, b, dt = r(4), r(6, 4), r(6, 4), r(4)
    q, k, v = r(2, 1, 2, 8), r(2, 1, 2, 8), r(2, 1, 4, 8)
    pool = r(3, 4, 8, 8)
    idx = torch.tensor([2, 0], dtype=torch.int32)

    def recurrent() -> Any:
        p = pool.clone()
        o, _ = gdn.fused_recurrent_gated_delta_rule(q, k, v, initial_state=p,
                                                    ssm_state_indices=idx,
                                                    inplace_final_state=True)
        return o, p

    return [("l2norm", lambda: gdn.l2norm(x)),
            ("fused_gdn_gating", lambda: gdn.fused_gdn_gating(A_log, a, b, dt)),
            ("fused_recurrent_gated_delta_rule", recurrent)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.fixture
def two_fake_backends(restore_registry):
    fakes = [_RecordingBackend("fake_a"), _RecordingBackend("fake_b")]
    for f in fakes:
        gdn.register_backend(f)
    yield fakes


def test_threads_forcing_different_backends(two_fake_backends):
    fake_a, fake_b = two_fake_backends
    calls = _calls()
    with gdn.use_backend("reference"):
        expected = {name: fn() for name, fn in calls}
    forced_by_thread: dict[str, str | None] = {}
    errors: list[str] = []
    start = threading.Barrier(9)
    stop_clearing = threading.Event()

    def worker(forced: str | None) -> None:
        me = threading.current_thread().name
        forced_by_thread[me] = forced
        start.wait()
        try:
            for i in range(ITERATIONS):
                name, fn = calls[i % len(calls)]
                if forced is None:
                    got = fn()
                else:
                    with gdn.use_backend(forced):
                        got = fn()
                if not _same(got, expected[name]):
                    errors.append(f"{me} ({forced}): wrong result for {name}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{me} ({forced}): {type(exc).__name__}: {exc}")

    def clearer() -> None:
        start.wait()
        while not stop_clearing.is_set():
            registry.clear_caches()

    plan = ["fake_a", "fake_b", "reference", None] * 2
    threads = [threading.Thread(target=worker, args=(f,), name=f"w{i}-{f}")
               for i, f in enumerate(plan)]
    threads.append(threading.Thread(target=clearer, name="clearer"))
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads[:-1]:
            t.join(timeout=120)
        stop_clearing.set()
        threads[-1].join(timeout=30)
    finally:
        sys.setswitchinterval(old_interval)
    assert not errors, "\n".join(errors)

    for fake in (fake_a, fake_b):
        callers = set(fake.calls)
        wanted = {t for t, f in forced_by_thread.items() if f == fake.name}
        assert callers == wanted, (fake.name, callers, wanted)
        assert sum(fake.calls.values()) == ITERATIONS * len(wanted)


def test_decision_cache_is_consistent_after_concurrent_calls(two_fake_backends):
    calls = _calls()
    results: dict[str, list] = collections.defaultdict(list)

    def worker(forced: str | None) -> None:
        for name, fn in calls * 5:
            with gdn.use_backend(forced):
                results[forced or "auto"].append(fn())

    threads = [threading.Thread(target=worker, args=(f,))
               for f in ("fake_a", "fake_b", "reference", None) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert dispatch._DECISIONS, "nothing was cached"
    for key, (impl, meta) in list(dispatch._DECISIONS.items()):
        op, forced = key[0], key[1]
        owner = registry.get_backend(forced or "reference")
        assert impl is owner.impl(op), (op, forced)
        assert meta.op == op


def test_use_backend_is_thread_local(two_fake_backends):
    fake_a, _ = two_fake_backends
    inside = threading.Event()
    release = threading.Event()
    x = torch.randn(3, 8)

    def holder() -> None:
        with gdn.use_backend("fake_a"):
            inside.set()
            release.wait(timeout=30)

    t = threading.Thread(target=holder, name="holder")
    t.start()
    inside.wait(timeout=30)
    try:
        assert registry.forced_backend_name("l2norm") == (None, None)
        gdn.l2norm(x)  # runs on the automatic choice, not on the other thread's fake_a
        assert sum(fake_a.calls.values()) == 0
        assert gdn.explain("l2norm", x).chosen == "reference"
    finally:
        release.set()
        t.join(timeout=30)
