"""Options declared once: a config dataclass's field carries its command-line flag.

A field made with `option(...)` holds its default, its help text and how its flag
reads; `add_flags` adds every such field of a config class to an argparse parser
(the help ends with the field's default, so no default is written twice), and
`from_args` builds the config back from the parsed arguments. The config's own
`__post_init__` is the one validator; the flag types below only turn text into
values with argparse's one-line errors.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Cfg:
    ...     steps: int = option(200, "training steps", type=positive_int)
    >>> p = argparse.ArgumentParser()
    >>> add_flags(p, Cfg)
    >>> from_args(Cfg, p.parse_args(["--steps", "5"]))
    Cfg(steps=5)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable


def option(default: Any, help: str, *, flag: str | None = None, type: Callable | None = None,
           choices=None, metavar: str | None = None, repeat: bool = False,
           default_text: str | None = None, parse: Callable | None = None,
           required: bool = False, minimum: int | None = None,
           fingerprint: bool = False) -> Any:
    """A config field with its flag.

    Args:
      default: the field's default (the flag's too).
      help: the flag's help; " (default …)" is added from `default` or `default_text`.
      flag: the flag's name (default: `--` and the field's name with dashes).
      type: converts the flag's text (argparse `type`; default: int or float as the default
        is, else text); `choices`, `metavar` as argparse.
      repeat: the flag may be given several times; the field is the tuple of them
        (the default when it is not given).
      default_text: how the help states the default, when the value alone would not say.
      parse: turns the flag's value into the field's (e.g. 0 into None).
      required: the flag must be given (no default in the help).
      minimum: the least value `validate` accepts (beside what `type` implies).
      fingerprint: the field belongs to the run's settings record, which a resumed run
        must match.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "type": type, "choices": choices, "metavar": metavar,
        "repeat": repeat, "default_text": default_text, "parse": parse, "required": required,
        "minimum": minimum, "fingerprint": fingerprint})


def same_option(owner, name: str, default: Any = dataclasses.MISSING, *, more: str = "",
                **changes) -> Any:
    """`owner`'s option `name` (its help, flag, type and checks, declared there once) as a
    field of another config, with this config's own default.

    Args:
      owner: the config class that declares the option (e.g. `OptimConfig`).
      name: the field's name there (and here).
      default: this config's default (default: the owner's).
      more: words added to the help, for what the option also means here.
      changes: other metadata to set here (e.g. `fingerprint=True`).

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Optim:
        ...     warmup: float = option(0.01, "warm-up as a fraction of the steps")
        >>> @dataclasses.dataclass(frozen=True)
        ... class Finetune:
        ...     warmup: float = same_option(Optim, "warmup", 0.1)
        >>> Finetune()
        Finetune(warmup=0.1)
    """
    f = {f.name: f for f in dataclasses.fields(owner)}[name]
    meta = {**f.metadata, **changes, "owner": owner.__name__}
    meta["help"] += more
    return dataclasses.field(default=f.default if default is dataclasses.MISSING else default,
                             metadata=meta)


def part(cls, cfg, **given):
    """A `cls` (e.g. `OptimConfig`) made of the same-named fields of `cfg` and `given`."""
    names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(cfg)}
    return cls(**{n: getattr(cfg, n) for n in names - set(given)}, **given)


def flagged(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str | None:
    m = f.metadata
    if m["required"]:
        return None
    if m["default_text"] is not None:
        return m["default_text"]
    d = f.default
    if d is None or d is False:
        return None
    if isinstance(d, tuple):
        return " and ".join(format(x, "g") if isinstance(x, float) else str(x) for x in d)
    return format(d, "g") if isinstance(d, float) else str(d)


def add_flags(parser, cls, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag for each `option` field of the config class `cls` (but `exclude`)."""
    for f in flagged(cls):
        if f.name in exclude:
            continue
        m, shown = f.metadata, _default_text(f)
        kwargs: dict[str, Any] = {"dest": f.name,
                                  "help": m["help"] + (f" (default: {shown})" if shown else "")}
        if isinstance(f.default, bool) and m["type"] is None:
            kwargs["action"] = "store_true"
        else:
            kind = m["type"]
            if kind is None and type(f.default) in (int, float):  # as the default reads
                kind = type(f.default)
            kwargs.update(type=kind, choices=m["choices"], metavar=m["metavar"])
            if m["repeat"]:
                kwargs.update(action="append", default=None)
            elif m["required"]:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
        parser.add_argument(flag_name(f), **kwargs)


def from_args(cls, args: argparse.Namespace, **extra):
    """The config `cls` from parsed arguments (its flagged fields) and `extra`."""
    values = {}
    for f in flagged(cls):
        if f.name in extra or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata["repeat"]:
            value = tuple(value) if value else f.default
        if f.metadata["parse"] is not None:
            value = f.metadata["parse"](value)
        values[f.name] = value
    return cls(**values, **extra)


def validate(cfg) -> None:
    """Refuse a config whose flagged fields are out of their flags' ranges or choices
    (`errors.check_ranges`), so that the Python API refuses what the flags refuse."""
    from bortsearch.errors import UserError, check_ranges

    ranges: dict[str, list] = {"positive": [], "fractions": [], "at_least": [], "choices": []}
    for f in flagged(cls := type(cfg)):
        m, flag, value = f.metadata, flag_name(f), getattr(cfg, f.name)
        if m["required"] and value is None:
            raise UserError(f"{flag}: required; see `bortsearch --help` ({cls.__name__})")
        for v in (value if m["repeat"] and value is not None else (value,)):
            if v is None and f.default is None:  # not set
                continue
            if m["minimum"] is not None:
                ranges["at_least"].append((flag, v, m["minimum"]))
            if m["choices"] is not None:
                ranges["choices"].append((flag, v, tuple(m["choices"])))
            elif m["type"] is positive_int:
                ranges["at_least"].append((flag, v, 1))
            elif m["type"] is non_negative_int:
                ranges["at_least"].append((flag, v, 0))
            elif m["type"] is positive_float:
                ranges["positive"].append((flag, v))
            elif m["type"] is non_negative_float and not (v >= 0 and math.isfinite(v)):
                raise UserError(f"{flag} must be non-negative and finite, got {v}")
            elif m["type"] is fraction:
                ranges["fractions"].append((flag, v))
    check_ranges(**ranges)


def fingerprint(cfg) -> dict:
    """The fields of `cfg` marked `fingerprint`, as JSON values."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("fingerprint"):
            value = getattr(cfg, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ---------------------------------------------------------------- flag types


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def _number(text: str, ok: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0 and math.isfinite(v), "a positive finite number")


def non_negative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0 and math.isfinite(v), "a non-negative finite number")


def fraction(text: str) -> float:
    return _number(text, lambda v: 0 <= v < 1, "a number in [0, 1)")
