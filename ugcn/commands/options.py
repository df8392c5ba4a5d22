"""Command-line options made from config dataclasses, checked in one place, and ``--config FILE``.

A command adds the fields of a config dataclass as flags with :func:`add_config_options` (type, default,
help and bounds from the field metadata, see :mod:`ugcn.config`); :func:`resolve_options`, called by
``ugcn.cli.main`` before the command runs, builds the config back, checks every value and stores the
config on ``args`` under the name the command chose. A value comes from, in order: the flag given on the
command line, the file of ``--config`` (a ``report.json`` of an earlier run, or any JSON of the same
settings), the dataclass default. A bad value, wherever it came from, is one line naming the flag (or the
file's key) and exit code 2: ``ugcn refine: error: --seed must be a non-negative integer, got -1``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from ugcn.config import (
    MAX_SEED,
    FieldType,
    attribute_docs,
    bounds,
    check_value,
    config_fields,
    describe_bounds,
    expressible,
    field_from_record,
    field_type,
    plain_text,
    setting,
)

SETS = "_option_sets"  # parser default: the option sets of a command, resolved by resolve_options
CONFIG_FLAG = "config"
# What argparse takes for a negative number (a value, not an option) after a flag. Its own pattern
# (``-\d+|-\d*\.\d+``) misses scientific notation, so ``--lam -1e-3`` failed with "expected one argument"
# and users had to write ``--lam=-1e-3``. None of ugcn's flags looks like a negative number.
NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How many stochastic passes, how many at a time, and the seed (every command that samples).

    Attributes:
      n_samples: T stochastic passes (MC dropout or test-time augmentation).
      chunk: passes computed together (memory grows with it).
      seed: seed of every random choice (dropout masks, TTA transforms, graph, fits).
    """

    n_samples: int = setting(20, min=1, metavar="T")
    chunk: int = setting(4, min=1)
    seed: int = setting(0, min=0, max=MAX_SEED)


@dataclasses.dataclass(frozen=True)
class SampleSource:
    """Where the stochastic passes of a model come from.

    Attributes:
      source: mc = MC dropout passes; tta = test-time augmentation (flips and in-plane shifts of the image,
        dropout off), for models trained without dropout.
      tta_max_shift: with --source tta, in-plane shifts are drawn from -S..S voxels.
    """

    source: str = setting("mc", choices=("mc", "tta"))
    tta_max_shift: int = setting(2, min=0, metavar="S")


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a folder is processed (the folder modes: refine-batch, mcdo --images, lesions score --images).

    Attributes:
      batch_size: volumes per compiled call, rounded up to a multiple of --devices; each batch is written
        as soon as it is done.
      devices: spread each batch over N devices of this process (none: all).
    """

    batch_size: int = setting(8, min=1)
    devices: Optional[int] = setting(None, min=1)


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag: the path of its field in the config (``("fit", "epochs")``), the field and its type."""

    path: tuple[str, ...]
    flag: str
    dest: str
    field: dataclasses.Field
    type: FieldType


@dataclasses.dataclass(frozen=True)
class OptionSet:
    """The flags of one config dataclass: built into ``args.<name>``; ``record``: where a report records
    the config (a key, or ``None`` for the report's top level), read by ``--config``."""

    cls: type
    name: str
    options: tuple[Option, ...]
    record: Optional[str]
    defaults: tuple[tuple[tuple[str, ...], Any], ...] = ()
    excluded: frozenset = frozenset()
    presets: tuple[Preset, ...] = ()


@dataclasses.dataclass(frozen=True)
class Preset:
    """``--<flag>-preset NAME``: the nested config at ``path`` starts from ``choices[NAME]`` (default: the
    first choice); its own flags still override single fields."""

    path: tuple[str, ...]
    flag: str
    dest: str
    choices: dict


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parser_of(t: FieldType):
    if t.length == -1:  # a list of any length: "0.8,0.9" or "0.8 0.9", split and converted by _split
        return str
    parse = {int: _parse_int, float: _parse_float}.get(t.base, str)
    if not t.optional:
        return parse

    def optional(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    return optional


def _show_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value and isinstance(value[0], str) else " ".join(map(str, value))
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _leaves(cls: type, path: tuple, prefix: str, flags: dict, exclude: set, docs_of: dict, prefixes: dict):
    for f in config_fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        key = ".".join(path + (f.name,))
        if key in exclude or f.name in exclude and not path:
            continue
        t = field_type(cls, f)
        if dataclasses.is_dataclass(t.base) and t.length is None:
            inner = prefixes.get(key, f.metadata.get("prefix", f"{f.name.replace('_', '-')}-"))
            yield from _leaves(t.base, path + (f.name,), prefix + inner, flags, exclude, docs_of, prefixes)
            continue
        if not expressible(t):
            continue
        flag = flags.get(key) or prefix + f.metadata.get("flag", f.name.replace("_", "-"))
        docs_of[key] = attribute_docs(cls).get(f.name, "")
        yield Option(path + (f.name,), flag, flag.replace("-", "_"), f, t)


def _get(config_or_dict: Any, path: Sequence[str]) -> Any:
    value = config_or_dict
    for name in path:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


def _has(data: dict, path: Sequence[str]) -> bool:
    for name in path:
        if not isinstance(data, dict) or name not in data:
            return False
        data = data[name]
    return True


def _help(option: Option, doc: str, default: Any) -> str:
    text = option.field.metadata.get("help") or doc or option.field.name.replace("_", " ")
    text = plain_text(text).rstrip(".")
    extra = []
    choices = option.field.metadata.get("choices")
    if option.type.base in (int, float):
        b = bounds(option.field, option.type)
        if b:
            extra.append(describe_bounds(option.type, b))
    extra.append(f"default {_show_default(default)}")
    if choices is None and option.type.length == -1:
        extra.append("comma-separated")
    return f"{text} ({'; '.join(extra)})".replace("%", "%%")


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    name: str,
    title: Optional[str] = None,
    record: Optional[str] = None,
    flags: Optional[dict[str, str]] = None,
    exclude: Sequence[str] = (),
    defaults: Optional[dict[str, Any]] = None,
    prefix: str = "",
    prefixes: Optional[dict[str, str]] = None,
    presets: Optional[dict[str, tuple[dict[str, Any], str]]] = None,
) -> OptionSet:
    """Add one flag per field of the config dataclass ``cls`` (nested configs flattened) to ``parser``.

    Args:
      name: ``args.<name>`` receives the built config (after :func:`resolve_options`).
      title: heading of the flags in ``--help`` (default: the class's first docstring line).
      record: where a ``report.json`` records this config (``--config`` reads it from there); ``None`` =
        the fields sit at the report's top level.
      flags: ``{"field" or "outer.inner": "flag-name"}`` overrides of the generated names.
      exclude: fields (or dotted paths) left off the command line; they keep their defaults.
      defaults: this command's defaults where they differ from the dataclass's (``{"field": value}``).
      prefix: put before every generated flag name (``"unet-"``: ``--unet-epochs``); not before ``flags``.
      prefixes: ``{"nested_field": "gcn-"}``: the flag prefix of a nested config's fields (default: the
        field's metadata ``prefix``, else its name and ``-``).
      presets: ``{"nested_field": ({name: config, ...}, help)}``: a ``--<prefix>preset NAME`` flag choosing the
        config that nested field starts from (``""``: the whole config, flag ``--preset``). The first name is
        the default; a preset given explicitly wins over ``--config``'s record, single-field flags win over
        both, and the most specific preset wins over an enclosing one.

    Every flag's value lands in ``args.<flag with _>`` too, resolved and checked.
    """
    allow_negative_numbers(parser)
    docs: dict[str, str] = {}
    options = tuple(_leaves(cls, (), prefix, dict(flags or {}), set(exclude), docs, dict(prefixes or {})))
    overrides = tuple((tuple(k.split(".")), v) for k, v in (defaults or {}).items())
    base = cls()
    group_title = title or plain_text((cls.__doc__ or cls.__name__).strip().splitlines()[0]).rstrip(".")
    group = parser.add_argument_group(group_title)
    for opt in options:
        default = dict(overrides).get(opt.path, _get(base, opt.path))
        kwargs: dict[str, Any] = dict(dest=opt.dest, default=argparse.SUPPRESS,
                                      help=_help(opt, docs[".".join(opt.path)], default))
        if opt.type.base is bool and opt.type.length is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parser_of(opt.type)
            kwargs["metavar"] = opt.field.metadata.get("metavar") or (
                "NAME" if opt.type.base is str else "N" if opt.type.base is int else "X")
            choices = opt.field.metadata.get("choices")
            if choices is not None and opt.type.length is None:
                kwargs["choices"] = choices
                kwargs.pop("metavar")
            if opt.type.length is not None:
                kwargs["nargs"] = opt.type.length if opt.type.length >= 0 else "+"
        group.add_argument(f"--{opt.flag}", **kwargs)
    preset_list = []
    for key, (choices, text) in (presets or {}).items():
        path = tuple(key.split(".")) if key else ()  # "": the whole config
        field_prefix = (prefixes or {}).get(key, f"{path[-1].replace('_', '-')}-" if path else "")
        flag = f"{prefix}{field_prefix}preset"
        first = next(iter(choices))
        group.add_argument(f"--{flag}", dest=flag.replace("-", "_"), choices=tuple(choices), default=argparse.SUPPRESS,
                           help=f"{plain_text(text)} (default {first})".replace("%", "%%"))
        preset_list.append(Preset(path, flag, flag.replace("-", "_"), dict(choices)))
    option_set = OptionSet(cls, name, options, record, overrides, frozenset(tuple(e.split(".")) for e in exclude),
                           tuple(preset_list))
    parser.set_defaults(**{SETS: (parser.get_default(SETS) or ()) + (option_set,)})
    return option_set


def allow_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` read ``-1e-3`` (any :data:`NEGATIVE_NUMBER`) after a flag as its value.

    argparse decides whether an argument is an option or a value with a private pattern; this widens it to
    scientific notation (argparse still treats such arguments as options if the parser has an option that
    looks like a negative number, which none of ugcn's has).
    """
    parser._negative_number_matcher = NEGATIVE_NUMBER


def add_config_file_option(parser: argparse.ArgumentParser, record: str = "the report.json of an earlier run") -> None:
    """``--config FILE``: take every setting not given on the command line from a recorded run."""
    parser.add_argument(f"--{CONFIG_FLAG}", metavar="FILE", default=None,
                        help=f"rerun a recorded configuration: {record} (or a JSON file of the same settings); "
                        "flags given here override it")


def _read_config_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object (a report.json), got {type(data).__name__}")
    return data


def _split(value: Any, t: FieldType, flag: str = "") -> Any:
    """The comma-separated values of a variable-length tuple option split into items (``a,b c`` -> a, b, c),
    numbers converted (``ValueError`` naming ``flag`` when one is not a number)."""
    if t.length != -1 or not isinstance(value, (list, tuple)):
        return value
    items = [part.strip() for v in value for part in str(v).split(",") if part.strip()]
    parse = {int: _parse_int, float: _parse_float}.get(t.base)
    if parse is None:
        return items
    try:
        return [parse(item) for item in items]
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{flag}: {err}") from None


def _build(cls: type, values: dict[tuple, Any], base: Any, bases: dict, prefix: tuple = ()) -> Any:
    """A ``cls`` from ``values`` (by field path); fields without a value are taken from ``base`` (the chosen
    preset, or the default config), nested configs from their own preset in ``bases`` when there is one."""
    kwargs = {}
    for f in config_fields(cls):
        t = field_type(cls, f)
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(t.base) and t.length is None:
            kwargs[f.name] = _build(t.base, values, bases.get(path, getattr(base, f.name)), bases, path)
        elif path in values:
            kwargs[f.name] = values[path]
        else:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def _recorded_only(cls: type, section: dict, flagged: set, where: str, path: tuple = ()) -> dict:
    """Values of ``section`` for the fields of ``cls`` that have no flag (nested configs searched too)."""
    out = {}
    for f in config_fields(cls):
        if f.name not in section or path + (f.name,) in flagged:
            continue
        t = field_type(cls, f)
        if dataclasses.is_dataclass(t.base) and t.length is None:
            if isinstance(section[f.name], dict):
                out.update(_recorded_only(t.base, section[f.name], flagged, f"{where}{f.name}.", path + (f.name,)))
            continue
        out[path + (f.name,)] = field_from_record(cls, f, section[f.name], where)
    return out


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """Build and check every config of the command (see the module docstring); returns ``args``.

    Raises ``ValueError`` with one line naming the flag (or the ``--config`` key) of a bad value.
    """
    sets: tuple[OptionSet, ...] = getattr(args, SETS, None) or ()
    given_dests: set[str] = set()  # the dests given on the command line (args.explicit_options)
    path = getattr(args, CONFIG_FLAG, None)
    recorded = _read_config_file(path) if path else None
    for option_set in sets:
        section = None
        if recorded is not None:
            section = recorded if option_set.record is None else recorded.get(option_set.record)
            if section is not None and not isinstance(section, dict):
                raise ValueError(f"--config {path}: {option_set.record!r} is not a JSON object of settings")
        overrides = dict(option_set.defaults)
        chosen: dict[tuple, tuple[Any, Optional[str]]] = {}  # preset path -> (its config, flag if given)
        for preset in option_set.presets:
            explicit = hasattr(args, preset.dest)
            name = getattr(args, preset.dest) if explicit else next(iter(preset.choices))
            setattr(args, preset.dest, name)
            chosen[preset.path] = (preset.choices[name], f"--{preset.flag}" if explicit else None)

        def presets_over(path: tuple, chosen: dict = chosen) -> list:
            """The presets whose config holds ``path``, the most specific first."""
            return [path[:k] for k in range(len(path) - 1, -1, -1) if path[:k] in chosen]

        # Each value: the flag given > an explicit preset > --config's record > the preset (default) > default.
        values: dict[tuple, Any] = {}
        for opt in option_set.options:
            over = presets_over(opt.path)
            given = [q for q in over if chosen[q][1]]
            if hasattr(args, opt.dest):
                value, name = _split(getattr(args, opt.dest), opt.type, f"--{opt.flag}"), f"--{opt.flag}"
                given_dests.add(opt.dest)
            elif given:
                value, name = _get(chosen[given[0]][0], opt.path[len(given[0]):]), chosen[given[0]][1]
            elif section is not None and _has(section, opt.path):
                value = _get(section, opt.path)
                key = ".".join(((option_set.record,) if option_set.record else ()) + opt.path)
                name = f"--config {path}: {key}"
            elif over:
                value, name = _get(chosen[over[0]][0], opt.path[len(over[0]):]), f"--{opt.flag}"
            else:
                value, name = overrides.get(opt.path, _get(option_set.cls(), opt.path)), f"--{opt.flag}"
            value = check_value(name, value, opt.field, opt.type)
            values[opt.path] = value
            setattr(args, opt.dest, value)
        # Fields without a flag (e.g. a tuple of records): an explicit preset's, else the record's, else the
        # preset's (default) or the dataclass default (in _build).
        if section is not None:
            where = f"--config {path}: {option_set.record + '.' if option_set.record else ''}"
            recorded_only = _recorded_only(option_set.cls, section, set(values) | option_set.excluded, where)
            values.update({k: v for k, v in recorded_only.items() if not any(chosen[q][1] for q in presets_over(k))})
        bases = {q: config for q, (config, _) in chosen.items()}
        try:
            config = _build(option_set.cls, values, bases.get((), option_set.cls()), bases)
        except ValueError as err:
            raise ValueError(f"{err} (check the {option_set.cls.__name__} settings)") from None
        setattr(args, option_set.name, config)
    args.explicit_options = frozenset(given_dests)
    return args

