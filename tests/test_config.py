"""ugcn.config: field metadata, checks and the dict round trip of config dataclasses."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import pytest

from ugcn.config import attribute_docs, check_config, config_from_dict, config_to_dict, plain_text, setting


@dataclasses.dataclass(frozen=True)
class Inner:
    """Inner settings.

    Attributes:
      epochs: passes over the data.
    """

    epochs: int = setting(10, min=1)
    rate: float = setting(0.5, min=0, lt=1)


@dataclasses.dataclass(frozen=True)
class Outer:
    """Outer settings.

    Attributes:
      tau, margin: see
        :func:`~pkg.mod.build` and ``margin``.
      names: the ``estimator`` names.
    """

    tau: float = 0.8
    margin: int = 0
    shift: float = -1.0
    size: Optional[tuple[int, int, int]] = None
    names: tuple[str, ...] = ("a", "b")
    mode: str = setting("x", choices=("x", "y"))
    flag: bool = False
    inner: Inner = Inner()

    def __post_init__(self) -> None:
        check_config(self)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau": float("nan")}, "Outer.tau must be a non-negative finite number, got nan"),
        ({"tau": -1.0}, "Outer.tau must be a non-negative finite number, got -1.0"),
        ({"margin": -5}, "Outer.margin must be a non-negative integer, got -5"),
        ({"margin": 1.5}, "Outer.margin must be a non-negative integer, got 1.5"),
        ({"shift": float("inf")}, "Outer.shift must be a finite number, got inf"),
        ({"size": (4, 4)}, "Outer.size takes 3 values, got 2"),
        ({"size": (4, 2.5, 4)}, "Outer.size must be an integer, got 2.5"),
        ({"mode": "z"}, "Outer.mode must be one of x, y; got 'z'"),
        ({"flag": 1}, "Outer.flag must be true or false, got 1"),
        ({"inner": Inner(epochs=0)}, "Outer.inner.epochs must be a positive integer, got 0"),
        ({"inner": Inner(rate=1.0)}, "Outer.inner.rate must be a number in [0, 1), got 1.0"),
    ],
)
def test_check_config_names_the_field_and_the_rule(kwargs, message):
    with pytest.raises(ValueError) as err:
        Outer(**kwargs)
    assert str(err.value).startswith(message)


def test_bounds_are_inclusive_or_exclusive_as_declared():
    assert Outer(inner=Inner(epochs=1, rate=0.0)).inner == Inner(epochs=1, rate=0.0)  # min=1, min=0 inclusive
    assert Outer(tau=0.0, margin=0).tau == 0.0


def test_dict_round_trip_through_json():
    config = Outer(tau=0.3, margin=2, size=(8, 8, 4), names=("c",), mode="y", flag=True, inner=Inner(epochs=3))
    data = json.loads(json.dumps(config_to_dict(config)))
    assert data["size"] == [8, 8, 4] and data["inner"] == {"epochs": 3, "rate": 0.5}
    assert config_from_dict(Outer, data) == config


def test_from_dict_keeps_defaults_ignores_unknown_and_checks():
    assert config_from_dict(Outer, {"margin": 3, "not_a_field": 1}) == Outer(margin=3)
    assert config_from_dict(Outer, {"margin": 3.0}).margin == 3  # JSON may write integral floats
    with pytest.raises(ValueError, match=r"^inner\.epochs must be a positive integer, got 0$"):
        config_from_dict(Outer, {"inner": {"epochs": 0}})


def test_docstring_attributes_and_plain_text():
    docs = attribute_docs(Outer)
    assert docs["tau"] == docs["margin"] == "see build and margin."
    assert docs["names"] == "the estimator names."
    assert attribute_docs(Inner) == {"epochs": "passes over the data."}
    assert plain_text(":class:`ugcn.refine.RefineConfig` :mod:`the module <ugcn.io>` ``x=1``") == (
        "ugcn.refine.RefineConfig the module x=1")
