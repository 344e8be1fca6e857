"""Shared fixtures: a clean dispatch environment for every test, registry snapshots."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import oracle`

import gdn_dispatch as gdn  # noqa: E402
from gdn_dispatch import registry  # noqa: E402


@pytest.fixture
def clean_dispatch(monkeypatch):
    """The test ignores GDN_BACKEND* from the shell; decisions start from an empty cache.
    (Not autouse: a CI job may set GDN_BACKEND on purpose for other test files.)"""
    for name in list(os.environ):
        if name == "GDN_BACKEND" or name.startswith("GDN_BACKEND_"):
            monkeypatch.delenv(name, raising=False)
    registry.clear_caches()
    yield
    registry.clear_caches()


@pytest.fixture
def restore_registry():
    """Snapshot the registered backends; restore them (and drop cached decisions) after."""
    saved = dict(registry._BACKENDS)
    yield registry
    registry._BACKENDS.clear()
    registry._BACKENDS.update(saved)
    registry.clear_caches()


@pytest.fixture
def on_reference():
    """Run the test body with the reference backend forced in this thread."""
    with gdn.use_backend("reference"):
        yield


class FakeBackend(registry.Backend):
    """A backend made of data for selection tests: ``support`` tables and plain callables."""

    def __init__(self, name: str, support: dict, impls: dict | None = None, *,
                 priority: int = 50, preferred: tuple[str, ...] = (),
                 requires_triton: bool = False,
                 vendors: tuple[str, ...] = ("cpu", "nvidia", "amd")):
        super().__init__()
        self.name = name
        self.support = dict(support)
        self.priority = priority
        self.preferred_vendors = frozenset(preferred)
        self.requires_triton = requires_triton
        self.vendors = frozenset(vendors)
        self.calls: list[tuple[str, tuple, object]] = []
        self._fns = dict(impls or {})

    def _load(self, op: str):
        fn = self._fns.get(op)

        def run(*args, meta):
            self.calls.append((op, args, meta))
            return fn(*args, meta=meta) if fn is not None else (op, self.name)

        return run


@pytest.fixture
def fake_backend(restore_registry):
    """Factory: ``fake_backend(name, support, ...)`` registers a FakeBackend for this test.
    ``only=True`` first removes every other backend except the reference."""

    def make(name, support, impls=None, *, only=False, **kw):
        if only:
            for other in list(registry._BACKENDS):
                if other != "reference":
                    del registry._BACKENDS[other]
        return gdn.register_backend(FakeBackend(name, support, impls, **kw))

    return make
