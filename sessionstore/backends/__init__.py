"""Backends by name: ``memory``, ``pickle``, ``sqlite``, ``redis``, ``sql``.

``backend`` may also be a ``package.module:Class`` path to any
:class:`~sessionstore.backends.base.Backend` subclass.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

from ..errors import BackendError, BusyRetry, ConfigurationError
from .base import Backend, Record

__all__ = ["BACKENDS", "Backend", "Record", "load_backend"]

BACKENDS = {
    "memory": "sessionstore.backends.memory:MemoryBackend",
    "pickle": "sessionstore.backends.picklefile:PickleBackend",
    "sqlite": "sessionstore.backends.sqlite:SqliteBackend",
    "redis": "sessionstore.backends.redis:RedisBackend",
    "sql": "sessionstore.backends.sql:SqlBackend",
}


def backend_class(spec: str) -> type[Backend]:
    """Resolve a short name or ``module:Class`` path to a concrete Backend subclass.

    Anything else (a relative module, a module that fails to import, a class
    that is not a Backend or is abstract) is a ConfigurationError at start-up.
    """
    path = BACKENDS.get(spec, spec)
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        names = ", ".join(BACKENDS)
        raise ConfigurationError("backend", spec, f"expected one of {names}, or module:Class")
    if module_name.startswith("."):
        raise ConfigurationError("backend", spec, "a relative module path cannot be imported")
    try:
        module = importlib.import_module(module_name)
    except ConfigurationError:
        raise
    except Exception as exc:  # ImportError, or whatever the module raised
        raise ConfigurationError("backend", spec, f"cannot import {module_name}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigurationError("backend", spec, f"{path} is not a Backend subclass")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigurationError("backend", spec, f"{path} is abstract (lacks {missing})")
    return cls


def load_backend(
    spec: str | Backend, options: Mapping[str, object] | None = None, *, busy_timeout: float = 5.0
) -> Backend:
    """Build (or pass through) a backend and run its ``setup()``."""
    if options is not None and not isinstance(options, Mapping):
        raise ConfigurationError(
            "backend_options", options, "expected a mapping of option names to values", hide=True
        )
    if isinstance(spec, Backend):
        if options:
            key = next(iter(options))
            raise ConfigurationError(
                f"backend.{key}", options[key], "options go to the backend instance itself"
            )
        backend = spec
    elif isinstance(spec, str):
        backend = backend_class(spec.strip()).from_options(options or {}, busy_timeout=busy_timeout)
    else:
        raise ConfigurationError("backend", spec, "expected a name or a Backend instance")
    try:
        backend.setup()
    except BusyRetry as exc:  # busy for a request; at start-up, a failure
        raise BackendError(f"cannot start: {exc}", exc) from exc
    return backend
