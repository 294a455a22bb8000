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

    def __init__(self, family: str, load: Callable[[], object] | None = None) -> None:
        """``load`` imports the modules that register the entries, on the first look-up: for a
        family whose package does not import them eagerly (balancing methods, which need torch)."""
        self.family = family
        self._entries: dict[str, type[T]] = {}
        self._load = load

    def _loaded(self) -> dict[str, type[T]]:
        load, self._load = self._load, None
        if load is not None:
            try:
                load()
            except BaseException:
                self._load = load  # a failed import is retried, not left half-registered
                raise
        return self._entries

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            self._entries[name] = cls
            setattr(cls, "registry_name", name)  # noqa: B010  (classes of any family)
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        entries = self._loaded()
        try:
            return entries[name]
        except KeyError:
            allowed = ", ".join(sorted(entries))
            raise ConfigError(
                f"unknown {self.family} '{name}'{did_you_mean(name, entries)}; allowed: {allowed}"
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
        return sorted(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()
