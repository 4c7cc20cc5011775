"""Run a template function's handler in-process: load its code by file path, invoke it with its environment.

Each function's module is imported once per runtime (its cold start) under a unique module name, from
`CodeUri/<module>.py`, with the function's environment variables set, and kept for warm invocations.
The environment (template variables plus what Lambda itself sets) is in `os.environ`, and the working
directory is the function's CodeUri folder (Lambda's task root), only while the handler runs. The
`pqlflow` package must already be importable (it is the layer; pytest's pythonpath or an installed
package provides it).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from pqlflow.kernel.errors import UsageError
from pqlflow.local.context import LambdaContext
from pqlflow.local.model import REGION, Function

_instances = itertools.count(1)


class FunctionLoadError(UsageError):
    """A function's handler file is missing, fails to import, or lacks the handler."""


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """The current directory is `path` inside the block (Lambda runs handlers in their task root)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` updated with `values` inside the block and restored exactly afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def lambda_environment(function: Function) -> dict[str, str]:
    """The variables Lambda sets for every function, before the template's own."""
    return {
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "LAMBDA_TASK_ROOT": str(function.code_uri),
        # No X-Ray daemon locally: Powertools Tracer would otherwise try to send segments.
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def serve_as(service: str) -> None:
    """Make the shared Powertools logger and metrics speak for `service`. On Lambda each function has a
    process of its own, where they read POWERTOOLS_SERVICE_NAME once, at import; here every function shares
    one process and one `pqlflow.kernel.observability`, so the function about to run says who it is."""
    from pqlflow.kernel.observability import logger, metrics

    logger.append_keys(service=service)
    metrics.service = service


class Outcome:
    """How one invocation went: the handler's return value, or the exception it raised."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None


class FunctionHost:
    """One function of the template, loaded on first use and invoked like Lambda would."""

    def __init__(self, function: Function, *, extra_environment: Mapping[str, str] | None = None) -> None:
        self.function = function
        self._env = {**lambda_environment(function), **function.environment, **(extra_environment or {})}
        self._module_name = f"pqlflow_local_fn_{next(_instances)}_{function.logical_id}"
        self._handler: Callable[[Any, Any], Any] | None = None

    @property
    def loaded(self) -> bool:
        return self._handler is not None

    def invoke(self, event: Any, context: LambdaContext | None = None) -> Any:
        """Call the handler with `event`; its exceptions propagate to the caller (the event source)."""
        with environment(self._env), working_directory(self.function.code_uri):
            handler = self._handler or self._load()
            service = self._env.get("POWERTOOLS_SERVICE_NAME")
            if service:
                serve_as(service)
            if context is None:
                context = LambdaContext(
                    function_name=self.function.name,
                    memory_limit_in_mb=self.function.memory_size,
                    timeout_seconds=self.function.timeout,
                )
            return handler(event, context)

    def unload(self) -> None:
        sys.modules.pop(self._module_name, None)
        self._handler = None

    def _load(self) -> Callable[[Any, Any], Any]:
        fn = self.function
        path = fn.handler_file
        where = f"function {fn.logical_id} (Handler {fn.handler}, CodeUri {fn.code_uri})"
        if not path.is_file():
            raise FunctionLoadError(f"{where}: no handler file {path}")
        spec = importlib.util.spec_from_file_location(self._module_name, path)
        if spec is None or spec.loader is None:
            raise FunctionLoadError(f"{where}: cannot load {path}")
        module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[self._module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(self._module_name, None)
            raise FunctionLoadError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        handler = getattr(module, fn.handler_attribute, None)
        if not callable(handler):
            sys.modules.pop(self._module_name, None)
            raise FunctionLoadError(f"{where}: {path} has no callable {fn.handler_attribute!r}")
        self._handler = handler
        return handler
