"""Where and how widely `run_items` runs: `ExecutorConfig` and the CLI options built from it."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refine.errors import ConfigError

__all__ = ["RAY_INSTALL_HINT", "ExecutorConfig", "ExecutorOption", "RayAddressOption"]

RAY_INSTALL_HINT = "pip install 'dspy-refine[ray]'"


class ExecutorConfig(BaseModel):
    """Where and how widely `run_items` runs. One class for the Python API and the CLI options.

    Example:
        >>> ExecutorConfig(executor="ray", workers=8).chunk_size_for(1000)
        32
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: Literal["local", "ray"] = Field(
        "local", description="local: a thread pool in this process (default). ray: Ray tasks on a Ray cluster."
    )
    workers: int = Field(
        4,
        ge=1,
        description="local: threads. ray: Ray tasks running at once (and the CPUs of a Ray instance started here).",
    )
    ray_address: str | None = Field(
        None, description="Address of a running Ray cluster ('auto', 'ray://host:10001'); none starts one locally."
    )
    threads_per_worker: int = Field(
        1, ge=1, description="ray: threads inside each Ray task (raise it when each item waits on a remote LM API)."
    )
    chunk_size: int | None = Field(
        None, ge=1, description="ray: items per Ray task; default about 4 chunks per worker, at most 64 per thread."
    )
    max_retries: int = Field(3, ge=0, description="ray: times a task is re-run after its worker process died.")

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutorConfig:
        if self.ray_address and self.executor != "ray":
            raise ValueError("ray_address (--ray-address) only applies with executor='ray' (--executor ray)")
        return self

    @classmethod
    def from_options(cls, executor: str | ExecutorConfig = "local", **options: Any) -> ExecutorConfig:
        """Build a config from CLI/API options, turning validation errors into a `ConfigError` that says the fix."""
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(executor, ExecutorConfig):
            if not given:
                return executor
            given = {**executor.model_dump(), **given}
        else:
            given["executor"] = executor
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"Invalid executor settings ({problems}). Use --executor local|ray, --workers N (>= 1), "
                "and --ray-address only together with --executor ray."
            ) from None

    def chunk_size_for(self, n_items: int) -> int:
        """Items per Ray task: small enough to spread over the workers and to lose little to a dead worker."""
        if self.chunk_size:
            return self.chunk_size
        t = self.threads_per_worker
        size = max(t, min(64 * t, math.ceil(n_items / (self.workers * 4))))
        return math.ceil(size / t) * t  # whole rounds of the task's threads: no thread idles at a chunk's end


# Typer option types shared by `refine synth` and `refine eval` (one source of help text).
ExecutorOption = Annotated[
    str, typer.Option("--executor", help="local (threads in this process, default) or ray (Ray tasks).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster to join ('auto', 'ray://head:10001'); default: start one here."),
]
