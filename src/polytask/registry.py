"""A name -> class registry, one per method family (architectures, balancers, ...).

Adding a method means adding one file that decorates its class with ``@REGISTRY.register``;
configs then name it by string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from polytask.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps config names to classes of one family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            allowed = ", ".join(sorted(self._entries))
            raise ConfigError(
                f"unknown {self.family} '{name}'{did_you_mean(name, self._entries)}; "
                f"allowed: {allowed}"
            ) from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plug-in registered for a while, e.g. in a test or a notebook)."""
        if name not in self._entries:
            raise KeyError(f"{self.family} '{name}' is not registered")
        del self._entries[name]

    @contextmanager
    def registered(self, name: str, cls: type[T]) -> Iterator[type[T]]:
        """``cls`` registered as ``name`` inside the block only."""
        self.register(name)(cls)
        try:
            yield cls
        finally:
            self.unregister(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
