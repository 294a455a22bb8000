"""The registry: names to classes, refusals, and temporary registration."""

from __future__ import annotations

import pytest

from polytask.errors import ConfigError
from polytask.registry import Registry


def test_register_get_unregister_and_the_temporary_block():
    family: Registry[object] = Registry("widget")

    @family.register("round")
    class Round:
        pass

    assert family.get("round") is Round and Round.registry_name == "round"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="registered twice"):
        family.register("round")(Round)
    with pytest.raises(ConfigError, match=r"unknown widget 'rond' \(did you mean 'round'\?\)"):
        family.get("rond")

    class Square:
        pass

    with family.registered("square", Square):
        assert family.names() == ["round", "square"]
    assert "square" not in family
    family.unregister("round")
    assert family.names() == []
    with pytest.raises(KeyError, match="'round' is not registered"):
        family.unregister("round")
