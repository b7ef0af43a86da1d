"""Typed options: each command's options are a dataclass, and each field declares its type, default,
bounds, help and command-line flags once.

The same declaration serves both doors:
- from Python, constructing the dataclass checks every value (``Options.__post_init__``) and
  refuses a bad one with a one-line ``InputError`` naming the argument;
- ``add_arguments`` generates the argparse options, whose parse-time checks (exit 2) are the same
  function, so ``--batch-size 0`` and ``batch_size=0`` are refused with the same words.

A field's type says what it takes:
- ``int`` / ``float`` with a ``Range`` in ``Annotated`` (``PositiveInt``, ``Seed``, ...);
- ``Literal[...]``: one of the choices; ``tuple[Literal[...], ...]``: a comma list of them;
- ``bool``: a switch (``--name``, or ``--no-name`` when the default is True); ``bool | None``:
  auto, true or false;
- ``str``, and paths marked ``Input(...)`` or ``Output(...)`` (an output's kind, file or
  directory, is checked before any work); ``list[...]``: one or more values;
- ``X | None``: None allowed;
- another ``Options`` dataclass declared with ``group()``: its fields, flattened into the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import stat
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from tfx.errors import InputError, TfxError
from tfx.outputs import DirOutput, FileOutput, check_output

REQUIRED = dataclasses.MISSING
_SAME = object()  # a field's Python name is its own


class Range:
    """Bounds of an int or float option: finite, ``lo <= v``, ``v <= hi``, ``v > above``; or one of ``also``."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None, above: float | None = None,
                 also: tuple = ()):
        self.kind, self.lo, self.hi, self.above, self.also = kind, lo, hi, above, also

    def holds(self, value) -> bool:
        if value in self.also:
            return True
        return (math.isfinite(value) and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
                and (self.above is None or value > self.above))

    def __str__(self) -> str:
        def g(v) -> str:
            return f"{v:g}" if isinstance(v, float) else str(v)

        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            bounds = f" from {g(self.lo)} to {g(self.hi)}"
        elif self.above is not None and self.hi is not None:
            bounds = f" > {g(self.above)} and <= {g(self.hi)}"
        elif self.lo is not None:
            bounds = f" >= {g(self.lo)}"
        elif self.above is not None:
            bounds = f" > {g(self.above)}"
        else:
            bounds = ""
        return noun + bounds + "".join(f" or {g(a)}" for a in self.also)


@dataclasses.dataclass(frozen=True)
class Input:
    """A path the command reads: a ``file`` or a ``dir`` (a checkpoint, a run). Readers check it
    with their own messages; the mark says which options are inputs (an output must not lie in one).
    A FIFO, socket or device is refused unless ``stream`` (a file read once from its start, such as a
    FASTA given as ``<(zcat x.fa.gz)``): HDF5 and the other readers seek, and a FIFO no one writes
    would wait forever."""

    kind: Literal["file", "dir"] = "file"
    stream: bool = False

    def problem(self, path: str) -> str | None:
        try:
            mode = os.stat(path).st_mode
        except OSError:  # absent, or a URI: the reader names it
            return None
        if self.stream or stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            return None
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{path}: is {kind}, which this command cannot read; name a regular file"


@dataclasses.dataclass(frozen=True)
class Output:
    """A path the command writes: a ``file`` (``what``: "the .h5ad file") or a ``dir`` (``what``:
    "the report"). The wrong kind already there is refused before any work; ``writes`` (what the
    command puts there) puts the path under the output policy of ``tfx.outputs``, with the options'
    ``overwrite`` and their ``Input`` paths."""

    kind: Literal["file", "dir"]
    what: str
    writes: FileOutput | DirOutput | None = None

    def problem(self, path: str) -> str | None:
        p = Path(path)
        if self.kind == "file" and p.is_dir():
            return f"{path}: is a directory; name {self.what} to write"
        if self.kind == "dir" and p.exists() and not p.is_dir():
            return f"{path}: is a file; name a directory for {self.what}"
        return None


PositiveInt = Annotated[int, Range(int, lo=1)]
Count = Annotated[int, Range(int, lo=0)]
Seed = Annotated[int, Range(int, lo=0, hi=2**32 - 1)]  # numpy's and torch's generators take it
PositiveFloat = Annotated[float, Range(float, above=0)]
Device = Literal["auto", "cpu", "cuda"]


def check_device_count(count: int, gpu: bool, asked: str, fewer: str, *,
                       no_gpu: str = "use the CPU, or run where the GPUs are", error: type[TfxError] = InputError) -> None:
    """``count`` devices beyond this machine's are refused in one line before any process starts: on
    CPU each device is a process (all of them would start), on GPU each is a CUDA device. ``asked``
    names the setting as the user wrote it; ``fewer`` says how to ask for fewer (``{have}``: what the
    machine has); ``no_gpu``: the fix where it has no CUDA device at all."""
    import torch

    have, what = (torch.cuda.device_count(), "CUDA devices") if gpu else (os.cpu_count() or 1, "CPUs")
    if gpu and not have:
        raise error(f"{asked} but this machine has no CUDA device; {no_gpu}")
    if count > have:
        raise error(f"{asked} but this machine has {have} {what}; set {fewer.format(have=have)}")


def option(default: Any = REQUIRED, *, help: str, flags: tuple[str, ...] = (), python: Any = _SAME,
           positional: bool = False, hidden: bool = False, metavar: str | None = None) -> Any:
    """A field of an ``Options`` dataclass. ``flags``: the command-line names (default ``--the-name``;
    the first is the one shown, the others aliases). ``python``: the name of the matching Python
    API argument, a tuple of names, or None for an option that only the command line has; the
    default is the field's own name. ``help`` may hold ``%(type)s`` (the range) and shows the default."""
    meta = {"help": help, "flags": tuple(flags), "python": python, "positional": positional, "hidden": hidden,
            "metavar": metavar}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"tfx": meta})
    return dataclasses.field(default=default, metadata={"tfx": meta})


def group(cls: type) -> Any:
    """A field holding another ``Options`` dataclass, whose options the command takes as its own."""
    return dataclasses.field(default_factory=cls, metadata={"tfx_group": True})


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field's declaration says, read once."""

    name: str
    kind: str  # bool, tristate, int, float, str, choice, csv
    optional: bool  # None is allowed
    many: bool  # a list of values (one or more on the command line)
    choices: tuple = ()
    range: Range | None = None
    path: Input | Output | None = None
    required: bool = False  # no default: the command line must give it
    default: Any = None
    help: str = ""
    flags: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    positional: bool = False
    hidden: bool = False
    metavar: str | None = None

    def describe(self) -> str:
        if self.kind in ("int", "float"):
            return str(self.range or Range(int if self.kind == "int" else float))
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "csv":
            return "a comma list of " + ", ".join(self.choices)
        if self.kind == "tristate":
            return "auto, true or false"
        return "a path" if self.path else "a string"

    def parse(self, text: str) -> Any:
        """Command-line text -> the value (ValueError with the message otherwise)."""
        if self.kind == "tristate":
            if text.lower() not in ("auto", "true", "false"):
                raise ValueError(f"{text} is not {self.describe()}")
            return None if text.lower() == "auto" else text.lower() == "true"
        if self.kind in ("int", "float"):
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                raise ValueError(f"{text} is not {self.describe()}") from None
            return self.check_one(value)
        return self.check_one(text)

    def check(self, value: Any) -> Any:
        """A Python value -> the value (normalised: paths as str, lists as lists); ValueError otherwise."""
        if value is None:
            if self.optional or self.kind == "tristate":
                return None
            raise ValueError(f"None is not {self.describe()}")
        if self.many:
            items = [value] if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"{value!r} is not a list of {self.describe()}")
            return [self.check_one(v) for v in items]
        return self.check_one(value)

    def check_one(self, value: Any) -> Any:
        bad = ValueError(f"{value!r} is not {self.describe()}" if not isinstance(value, str)
                         else f"{value} is not {self.describe()}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "tristate":
            if isinstance(value, str):
                return self.parse(value)
            if value not in (True, False):
                raise ValueError(f"{value!r} is not None (auto), True or False")
            return value
        if self.kind in ("int", "float"):
            number = numbers.Integral if self.kind == "int" else numbers.Real
            if isinstance(value, bool) or not isinstance(value, number):
                raise bad
            value = int(value) if self.kind == "int" else float(value)
            if self.range is not None and not self.range.holds(value):
                raise ValueError(f"{value:g} is not {self.describe()}" if self.kind == "float"
                                 else f"{value} is not {self.describe()}")
            return value
        if self.kind == "choice":
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = str(value)  # precision=32 is the command line's "32"
            if value not in self.choices:
                raise bad
            return value
        if self.kind == "csv":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
                raise bad
            items = [v.strip() for v in items if v.strip()]
            unknown = [v for v in items if v not in self.choices]
            if unknown or not items:
                raise ValueError(f"{','.join(unknown) or repr(value)} is not {self.describe()}")
            return tuple(dict.fromkeys(items))
        if isinstance(value, os.PathLike) and self.path is not None:
            value = os.fspath(value)
        if not isinstance(value, str):
            raise bad
        problem = self.path.problem(value) if self.path is not None else None
        if problem:
            raise ValueError(problem)
        return value


def _spec(cls: type, f: dataclasses.Field, hint: Any) -> Spec:
    meta = f.metadata["tfx"]
    extras: list = []
    optional = many = False
    while True:  # peel Annotated, Optional and list, in any order
        origin = get_origin(hint)
        if origin is Annotated:
            hint, *more = get_args(hint)
            extras += more
        elif origin is Union or (origin is not None and type(None) in get_args(hint)):
            args = [a for a in get_args(hint) if a is not type(None)]
            optional = len(args) < len(get_args(hint))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: one type, or one type | None")
            hint = args[0]
        elif origin is list:
            many, hint = True, get_args(hint)[0]
        else:
            break
    choices: tuple = ()
    if get_origin(hint) is tuple:
        kind, choices = "csv", get_args(get_args(hint)[0])
    elif get_origin(hint) is Literal:
        kind, choices = "choice", get_args(hint)
    elif hint is bool:
        kind = "tristate" if optional else "bool"
    else:
        kind = {int: "int", float: "float", str: "str"}.get(hint)
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: options are int, float, str, bool, Literal or a list of them")
    rng = next((e for e in extras if isinstance(e, Range)), None)
    path = next((e for e in extras if isinstance(e, (Input, Output))), None)
    flags = meta["flags"] or ((f.name,) if meta["positional"] else ("--" + f.name.replace("_", "-"),))
    python = (f.name,) if meta["python"] is _SAME else (() if meta["python"] is None else
                                                         (meta["python"],) if isinstance(meta["python"], str)
                                                         else tuple(meta["python"]))
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None if required else f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    return Spec(f.name, kind, optional, many, choices, rng, path, required, default, meta["help"], flags, python,
                meta["positional"], meta["hidden"], meta["metavar"])


@cache
def specs(cls: type) -> dict[str, Spec | type]:
    """{field name: Spec, or the Options class of a group} of an Options dataclass, in order."""
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, Spec | type] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("tfx_group"):
            out[f.name] = hints[f.name]
        else:
            out[f.name] = _spec(cls, f, hints[f.name])
    return out


def flat_specs(cls: type) -> list[Spec]:
    """Every option of ``cls``, groups flattened: what its command line takes."""
    out = []
    for item in specs(cls).values():
        out += flat_specs(item) if isinstance(item, type) else [item]
    return out


class Options:
    """Base of the option dataclasses: every field is checked when the object is made, and every
    output under the output policy (``Output.writes``), before any work."""

    def __post_init__(self) -> None:
        fields = {name: spec for name, spec in specs(type(self)).items() if isinstance(spec, Spec)}
        for name, spec in fields.items():
            try:
                object.__setattr__(self, name, spec.check(getattr(self, name)))
            except ValueError as err:
                raise InputError(f"{name}: {err}") from None
        inputs = [v for name, spec in fields.items() if isinstance(spec.path, Input)
                  for v in (getattr(self, name) or [] if spec.many else [getattr(self, name)]) if v is not None]
        for name, spec in fields.items():
            if isinstance(spec.path, Output) and spec.path.writes and getattr(self, name) is not None:
                check_output(getattr(self, name), spec.path.writes, overwrite=getattr(self, "overwrite", False),
                             inputs=inputs, option=(spec.flags or (f"--{name.replace('_', '-')}",))[0])


# ---- the command line --------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """A usage error is one line, as every other error is (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one (not for switches)."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], "") or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class _Type:
    """argparse's ``type``: parses and checks with the field's own rules; ``%(type)s`` shows the range."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def __call__(self, text: str):
        try:
            return self.spec.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def __str__(self) -> str:
        return self.spec.describe()


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per option of ``cls`` (groups flattened), its dest the field's name."""
    for spec in flat_specs(cls):
        kw: dict[str, Any] = {"help": argparse.SUPPRESS if spec.hidden else spec.help}
        if spec.kind == "bool":
            kw["action"] = "store_false" if spec.default is True else "store_true"
        else:
            kw["type"] = _Type(spec)
            if spec.kind == "choice":
                kw["metavar"] = "{" + ",".join(map(str, spec.choices)) + "}"
            if spec.many:
                kw["nargs"] = "*" if spec.default == [] else "+"
            elif spec.positional and not spec.required:
                kw["nargs"] = "?"
        if spec.metavar:
            kw["metavar"] = spec.metavar
        elif "metavar" not in kw and spec.kind != "bool" and not spec.positional:
            kw["metavar"] = spec.flags[0].lstrip("-").replace("-", "_").upper()
        if spec.positional:
            if not spec.required:
                kw["default"] = spec.default
            parser.add_argument(spec.name, **kw)
            continue
        if spec.required:
            kw["required"] = True
        elif spec.kind == "csv":
            kw["default"] = ",".join(spec.default)  # shown as typed; parsed like a value given
        else:
            kw["default"] = spec.default
        parser.add_argument(*spec.flags, dest=spec.name, **kw)


def from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` object of parsed arguments (its groups built from the same namespace)."""
    values = {}
    for name, item in specs(cls).items():
        values[name] = from_args(item, args) if isinstance(item, type) else getattr(args, name)
    return cls(**values)
