"""Settings of config dataclasses: help text and bounds in the field metadata, checks, dict round trip.

A config dataclass (``RefineConfig``, ``UNetConfig``, ``LesionProtocolConfig``, ...) declares each field
with :func:`setting` (or plain ``dataclasses.field(metadata=...)``), which records what the command line
needs: the help text, the valid range, the choices, the flag name. The library checks a config with
:func:`check_config`; the command line (``ugcn/commands/options.py``) makes one flag per field from the same
metadata, so a new field gets its flag, its help and its check without touching a command.

Metadata keys (all optional):
  help: one line for ``--help``; without it, the field's entry under ``Attributes:`` in the class docstring.
  min, max: inclusive bounds; gt, lt: exclusive bounds (numbers; checked element-wise for tuples).
  choices: the allowed values.
  flag: the command-line flag without ``--`` (default: the field name with ``-`` for ``_``).
  prefix: for a field that is itself a config dataclass, the flag prefix of its fields (default ``name-``).
  cli: False keeps the field off the command line.
  metavar: the value's name in ``--help``.

A numeric field without bounds whose default is >= 0 must be >= 0; a float must always be finite. A field
of another type (say, a tuple of records) gets no flag and no check.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Optional, Sequence

_MISSING = dataclasses.MISSING
MAX_SEED = 2**32 - 1  # the largest seed every consumer (jax.random.key, numpy) takes


def setting(
    default: Any = _MISSING,
    *,
    help: Optional[str] = None,
    min: Optional[float] = None,
    max: Optional[float] = None,
    gt: Optional[float] = None,
    lt: Optional[float] = None,
    choices: Optional[Sequence[Any]] = None,
    flag: Optional[str] = None,
    prefix: Optional[str] = None,
    cli: bool = True,
    metavar: Optional[str] = None,
) -> Any:
    """A dataclass field with its help text and bounds in ``metadata`` (see the module docstring)."""
    meta: dict[str, Any] = {k: v for k, v in dict(help=help, min=min, max=max, gt=gt, lt=lt, flag=flag, prefix=prefix,
                                   metavar=metavar).items() if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if not cli:
        meta["cli"] = False
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a field holds: ``base`` (int, float, str, bool or a config dataclass), ``length`` (None for a
    scalar, -1 for a tuple of any length, n for a tuple of n), ``optional`` (None is a value)."""

    base: type
    length: Optional[int] = None
    optional: bool = False


def _is_config(t: Any) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def field_type(cls: type, field: dataclasses.Field) -> FieldType:
    """The :class:`FieldType` of ``field`` of the dataclass ``cls`` (annotation, or the default's type)."""
    hint = typing.get_type_hints(cls).get(field.name, Any)
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
    default = field.default if field.default is not _MISSING else None
    if default is None and field.default is not _MISSING:
        optional = True
    origin = typing.get_origin(hint)
    if hint is tuple or origin is tuple or (hint is Any and isinstance(default, tuple)):
        items = typing.get_args(hint)
        if items and items[-1] is not Ellipsis:
            length = len(items)
        elif items:
            length = -1
        else:
            length = len(default) if isinstance(default, tuple) else -1
        elem = items[0] if items else (type(default[0]) if isinstance(default, tuple) and default else str)
        return FieldType(elem, length, optional)
    if hint is Any or not isinstance(hint, type):
        hint = type(default) if default is not None else str
    return FieldType(hint, None, optional)


def _numeric(t: FieldType) -> bool:
    return t.base in (int, float)


SCALARS = (int, float, str, bool)


def expressible(t: FieldType) -> bool:
    """Whether a field of type ``t`` can be written on a command line (numbers, text, switches and tuples of
    them); other fields (e.g. a tuple of records) keep their defaults there and are not checked here."""
    return t.base in SCALARS


def bounds(field: dataclasses.Field, t: FieldType) -> dict:
    """The bounds of a numeric field: its metadata, or ``min=0`` when it has none and its default is >= 0."""
    meta = {k: field.metadata[k] for k in ("min", "max", "gt", "lt") if k in field.metadata}
    if meta or not _numeric(t) or "choices" in field.metadata:
        return meta
    default = field.default if field.default is not _MISSING else None
    values = default if isinstance(default, tuple) else (default,)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and min(numbers) >= 0:
        return {"min": 0}
    return {}


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_bounds(t: FieldType, b: dict, value: Any = None) -> str:
    """``"a non-negative integer"``, ``"a number in [0, 1)"``, ... for a field of type ``t``; for an integer
    ``value`` below a 0 or 1 lower bound, only that bound (``--seed -1``: "a non-negative integer")."""
    kind = "integer" if t.base is int else "number"
    lo = ("[", b["min"]) if "min" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["max"]) if "max" in b else (")", b["lt"]) if "lt" in b else None
    finite = "" if t.base is int else "finite "
    below = isinstance(value, int) and lo is not None and not _within(value, {k: v for k, v in b.items()
                                                                                  if k in ("min", "gt")})
    if below and t.base is int and lo in (("[", 0), ("[", 1), ("(", 0)):
        hi = None
    if t.base is int and lo in (("[", 0), ("[", 1), ("(", 0)) and hi:  # "a non-negative integer <= 4294967295"
        sign = "non-negative" if lo == ("[", 0) else "positive"
        return f"a {sign} integer {'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    if lo and hi:
        return f"{'an' if t.base is int else 'a'} {kind} in {lo[0]}{_fmt(lo[1])}, {_fmt(hi[1])}{hi[0]}"
    if lo == ("[", 0):
        return f"a non-negative {finite}{kind}"
    if lo in (("(", 0), ("[", 1)) and t.base is int or lo == ("(", 0):
        return f"a positive {finite}{kind}"
    article = "a" if finite else "an"
    if lo:
        return f"{article} {finite}{kind} {'>=' if lo[0] == '[' else '>'} {_fmt(lo[1])}"
    if hi:
        return f"{article} {finite}{kind} {'<=' if hi[0] == ']' else '<'} {_fmt(hi[1])}"
    return f"{'an' if not finite else 'a'} {finite}{kind}"


def _within(v: float, b: dict) -> bool:
    return (("min" not in b or v >= b["min"]) and ("max" not in b or v <= b["max"])
            and ("gt" not in b or v > b["gt"]) and ("lt" not in b or v < b["lt"]))


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


def check_value(name: str, value: Any, field: dataclasses.Field, t: FieldType) -> Any:
    """``value`` converted to the field's type (lists to tuples, integral floats to int) and checked.

    Raises ``ValueError("<name> must be ..., got <value>")`` when it is the wrong type, out of bounds, not
    finite or not one of the choices.
    """
    if not expressible(t):
        return tuple(value) if t.length is not None and isinstance(value, list) else value
    if value is None:
        if t.optional:
            return None
        raise ValueError(f"{name} must be given (it has no 'none' value)")
    if t.length is not None:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value]
        if t.length >= 0 and len(value) != t.length:
            raise ValueError(f"{name} takes {t.length} values, got {len(value)} ({_show(value)})")
        if t.length < 0 and not value:
            raise ValueError(f"{name} takes at least one value")
        scalar = FieldType(t.base)
        return tuple(check_value(name, v, field, scalar) for v in value)
    b = bounds(field, t)
    if t.base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {_show(value)}")
    elif _numeric(t):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and t.base is int and isinstance(value, float):
            ok = math.isfinite(value) and value.is_integer()
            value = int(value) if ok else value
        ok = ok and (t.base is int or math.isfinite(value)) and _within(value, b)
        if not ok:
            raise ValueError(f"{name} must be {describe_bounds(t, b, value)}, got {_show(value)}")
        value = t.base(value)
    elif t.base is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a text value, got {_show(value)}")
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {_show(value)}")
    return value


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The init fields of the config dataclass ``cls``, in order."""
    return [f for f in dataclasses.fields(cls) if f.init]


def check_config(config: Any, prefix: Optional[str] = None) -> None:
    """Check every field of ``config`` (nested configs too) against its metadata; ``ValueError`` naming the
    first bad field as ``<Class>.<field>``. Call it from ``__post_init__``."""
    cls = type(config)
    prefix = prefix if prefix is not None else cls.__name__
    for f in config_fields(cls):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{prefix}.{f.name}")
            continue
        t = field_type(cls, f)
        check_value(f"{prefix}.{f.name}", value, f, t)


def config_to_dict(config: Any) -> dict:
    """``config`` as a JSON-ready dict (nested configs as dicts, tuples as lists)."""
    out = {}
    for f in config_fields(type(config)):
        value = getattr(config, f.name)
        out[f.name] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def config_from_dict(cls: type, data: dict, *, where: str = "") -> Any:
    """A ``cls`` from a dict as :func:`config_to_dict` writes it (missing fields keep their defaults,
    unknown keys are ignored: a record from another version still loads). Values are checked; a bad one
    raises ``ValueError`` naming ``<where><field>``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a JSON object of settings, got {type(data).__name__}")
    kwargs = {f.name: field_from_record(cls, f, data[f.name], where) for f in config_fields(cls) if f.name in data}
    return cls(**kwargs)


def field_from_record(cls: type, field: dataclasses.Field, value: Any, where: str = "") -> Any:
    """The value of ``field`` of ``cls`` from its JSON record (nested configs and tuples of records rebuilt),
    checked; a bad value raises ``ValueError`` naming ``<where><field>``."""
    t = field_type(cls, field)
    if _is_config(t.base) and t.length is None:
        return config_from_dict(t.base, value, where=f"{where}{field.name}.")
    if _is_config(t.base) and isinstance(value, (list, tuple)):  # a tuple of records
        return tuple(config_from_dict(t.base, item, where=f"{where}{field.name}[{i}].") for i, item in enumerate(value))
    return check_value(f"{where}{field.name}", value, field, t)


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]*)`")


def plain_text(text: str) -> str:
    """Docstring text without reST markup: ``x`` -> x, :func:`~a.b.f` -> f, :class:`a.B` -> a.B."""
    def role(m: re.Match) -> str:
        tilde, target = m.group(1), m.group(2)
        named = re.match(r"(.*?)\s*<[^>]*>$", target)
        if named:
            return named.group(1)
        return target.rsplit(".", 1)[-1] if tilde else target

    text = _ROLE.sub(role, text)
    return re.sub(r"``([^`]*)``", r"\1", text)


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s docstring as ``{field: text}`` (Google style; an entry
    ``a, b: text`` documents both)."""
    lines = (cls.__doc__ or "").expandtabs().splitlines()
    blocks: list[str] = []
    inside, indent = False, None
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside = True
            continue
        if not inside or not stripped:
            continue
        level = len(line) - len(line.lstrip())
        indent = level if indent is None else indent
        if level < indent:
            break
        if level == indent and (not blocks or ":" in blocks[-1]):
            blocks.append(stripped)
        else:
            blocks[-1] += " " + stripped
    out: dict[str, str] = {}
    for block in blocks:
        names, _, text = block.partition(": ")
        names_list = [n.strip() for n in names.split(",")]
        if text and all(n.isidentifier() for n in names_list):
            out.update({n: plain_text(text) for n in names_list})
    return out
