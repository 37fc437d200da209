"""Declaring messages: typed slotted classes with an `op` tag, validated on decode.

A message class lists its fields as annotations; from them this module builds
one validator per field once, at import. Decoding checks the op, that every
required field is present and of its declared type, ignores unknown fields,
and fills defaults for missing optional ones. Anything else is ProtocolError.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import types
import typing
from collections.abc import Callable, Generator
from typing import Annotated, Any, ClassVar, TypeVar, dataclass_transform, get_args, get_origin

from shoal.errors import ProtocolError
from shoal.protocol.serialize import Serialized

Validator = Callable[[object, str], object]


class _KeyMarker:
    """Annotation marker: a task key (str, bytes, int, finite float, or a tuple of them,
    tuples nesting up to MAX_KEY_DEPTH deep)."""


Key = Annotated[Any, _KeyMarker]


class _SignedMarker:
    """Annotation marker: an int that may be negative (a priority)."""


# Every other number on the wire is a count, a size, an index, an id, a duration,
# a resource amount or a load, and is refused below zero.
Signed = Annotated[int, _SignedMarker]


class _NameMarker:
    """Annotation marker: a str that names one of few things (a type), interned
    when decoded, so that a scheduler holding one per task holds one string."""


TypeName = Annotated[str, _NameMarker]

REGISTRY: dict[str, type[Message]] = {}


class Message:
    """Base of every message. Subclasses are made with `@message("op-name")`."""

    __slots__ = ()
    op: ClassVar[str]
    _fields: ClassVar[tuple[str, ...]]
    _required: ClassVar[frozenset[str]]
    _validators: ClassVar[tuple[tuple[str, Validator, str], ...]]
    # Fields declared as tuple[T, ...] or dict[K, V]: validating each slice of
    # such a value and joining the results is validating the whole.
    _sliceable: ClassVar[frozenset[str]]

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"op": self.op}
        for name in self._fields:
            wire[name] = getattr(self, name)
        return wire


M = TypeVar("M", bound=Message)


# dataclass_transform: type checkers see each message's fields and constructor.
@dataclass_transform()
def message(op: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a slotted dataclass message and register its op."""

    def wrap(cls: type[M]) -> type[M]:
        if op in REGISTRY:
            raise TypeError(f"op {op!r} is declared twice")
        made: Any = dataclasses.dataclass(slots=True)(cls)
        made.op = op
        hints = typing.get_type_hints(made, include_extras=True)
        fields = dataclasses.fields(made)
        made._fields = tuple(f.name for f in fields)
        made._required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        # (field, validator, where): `where` names the field in error messages.
        made._validators = tuple(
            (f.name, compile_type(hints[f.name]), f"{op}.{f.name}") for f in fields
        )
        made._sliceable = frozenset(f.name for f in fields if _sliceable(hints[f.name]))
        made.to_wire = _make_to_wire(made)
        REGISTRY[op] = made
        _DECODERS[op] = _make_decoder(made, fields)
        return made

    return wrap


def _sliceable(tp: object) -> bool:
    """tuple[T, ...] and dict[K, V]; not a fixed-length tuple[A, B]."""
    origin = get_origin(tp)
    return origin is dict or (origin is tuple and get_args(tp)[-1:] == (Ellipsis,))


def from_wire(wire: object) -> Message:
    """Build and validate a message from a decoded msgpack map.

    Raises:
        ProtocolError: unknown op, missing field, or a field of the wrong type.
    """
    if not isinstance(wire, dict):
        raise ProtocolError(f"a message must be a map, not {type(wire).__name__}")
    op = wire.get("op")
    decode = _DECODERS.get(op) if isinstance(op, str) else None
    if decode is None:
        raise ProtocolError(f"unknown message op {op!r}")
    return decode(wire)


# Each message class's decoder and to_wire are written out as Python source once,
# at import: a field read, checked and stored per line, with the checks of the
# common exact types inline, instead of a loop over the fields and a call of the
# class with keywords. Every message on the wire goes through them, so this is
# the codec's hottest code (benchmarks/codecs.py measures it).
_DECODERS: dict[str, Callable[[dict], Message]] = {}
_MISSING = object()
_INLINE_CHECKS = {str: "str", bytes: "bytes", bool: "bool"}


def _missing(cls: type[Message], wire: dict) -> typing.NoReturn:
    names = ", ".join(sorted(cls._required.difference(wire)))
    raise ProtocolError(f"{cls.op}: missing field(s) {names}")


def _make_decoder(cls: type[Message], fields: tuple[dataclasses.Field, ...]) -> Callable:
    """The function from a wire map (op already checked) to a message of `cls`,
    doing what the validators in `cls._validators` do, field by field."""
    env: dict[str, object] = {
        "new": object.__new__,
        "cls": cls,
        "MISSING": _MISSING,
        "missing": _missing,
        "fail": _fail,
    }
    lines = ["def decode(wire):", "    get = wire.get", "    self = new(cls)"]
    required = [f.name for f in fields if f.name in cls._required]
    if required:
        present = " and ".join(f"{name!r} in wire" for name in required)
        lines.append(f"    if not ({present}):")
        lines.append("        missing(cls, wire)")
    hints = typing.get_type_hints(cls, include_extras=True)
    for i, ((name, check, where), field) in enumerate(zip(cls._validators, fields, strict=True)):
        env[f"check{i}"] = check
        label = _INLINE_CHECKS.get(hints[name])
        if label is not None:
            checked = f"(v if type(v) is {label} else fail({where!r}, {label!r}, v))"
        else:
            checked = f"check{i}(v, {where!r})"
        lines.append(f"    v = get({name!r}, MISSING)")
        if field.default is not dataclasses.MISSING:
            env[f"default{i}"] = field.default
            lines.append(f"    self.{name} = default{i} if v is MISSING else {checked}")
        elif field.default_factory is not dataclasses.MISSING:
            env[f"factory{i}"] = field.default_factory
            lines.append(f"    self.{name} = factory{i}() if v is MISSING else {checked}")
        else:  # required: present, as checked above
            lines.append(f"    self.{name} = {checked}")
    lines.append("    return self")
    exec("\n".join(lines), env)  # the source is built above from the field names
    return typing.cast(Callable, env["decode"])


def _make_to_wire(cls: type[Message]) -> Callable[[Message], dict[str, object]]:
    """`to_wire` for `cls`: the op, then each field, in one dict display."""
    items = ", ".join(f"{name!r}: self.{name}" for name in ("op", *cls._fields))
    env: dict[str, object] = {}
    exec(f"def to_wire(self):\n    return {{{items}}}", env)
    return typing.cast(Callable[[Message], dict[str, object]], env["to_wire"])


class Parts(list):
    """A field value decoded in slices (shoal.protocol.slices): tuples (an array)
    or dicts (a map), in order; `joined()` is the whole value."""

    __slots__ = ("is_map",)

    def __init__(self, is_map: bool) -> None:
        super().__init__()
        self.is_map = is_map

    def joined(self) -> object:
        if self.is_map:
            whole: dict = {}
            for part in self:
                whole.update(part)
            return whole
        return tuple(itertools.chain.from_iterable(self))


def sliced_from_wire(
    wire: object,
) -> Generator[None, None, Message]:
    """from_wire for a map whose long values were decoded in `Parts`;
    yields after validating each part. The same checks, the same message.

    Raises:
        ProtocolError: as from_wire.
    """
    if not isinstance(wire, dict):
        return from_wire(wire)
    op = wire.get("op")
    cls = REGISTRY.get(op) if isinstance(op, str) else None
    if cls is None or cls._required.difference(wire):
        return from_wire({k: v.joined() if type(v) is Parts else v for k, v in wire.items()})
    kwargs = {}
    for name, check, where in cls._validators:
        if name not in wire:
            continue
        value = wire[name]
        if type(value) is not Parts:
            kwargs[name] = check(value, where)
        elif name not in cls._sliceable:
            kwargs[name] = check(value.joined(), where)
        else:
            done = []
            for part in value:
                done.append(check(part, where))
                yield
            value[:] = done
            kwargs[name] = value.joined()
    return cls(**kwargs)


# -- validators ----------------------------------------------------------------


def _fail(where: str, expected: str, value: object) -> typing.NoReturn:
    raise ProtocolError(f"{where}: expected {expected}, got {type(value).__name__}")


def _exact(tp: type, label: str) -> Validator:
    def check(value: object, where: str) -> object:
        if type(value) is not tp:
            _fail(where, label, value)
        return value

    return check


def _check_name(value: object, where: str) -> object:
    if type(value) is not str:
        _fail(where, "str", value)
    return sys.intern(value)


def _check_float(value: object, where: str) -> object:
    # Every float on the wire is a duration, a size, a resource amount or a load:
    # NaN, the infinities and negative numbers have no meaning there and would
    # poison comparisons and sums (a NaN resource fits nowhere and everywhere, a
    # negative duration drags the mean down), so they are refused here.
    if type(value) is float:
        if not math.isfinite(value):
            raise ProtocolError(f"{where}: expected a finite number, got {value!r}")
        if value < 0.0:
            raise ProtocolError(f"{where}: expected a number at least 0, got {value!r}")
        return value
    if type(value) is int:  # msgpack ints are at most 64 bits: always finite as floats
        if value < 0:
            raise ProtocolError(f"{where}: expected a number at least 0, got {value!r}")
        return float(value)
    _fail(where, "float", value)


def _check_count(value: object, where: str) -> object:
    if type(value) is not int:
        _fail(where, "int", value)
    if value < 0:
        raise ProtocolError(f"{where}: expected an int at least 0, got {value!r}")
    return value


def _check_any(value: object, where: str) -> object:
    return value


# How deep key tuples may nest: task-based shuffles make keys such as
# ("shuffle-group-x", 2, (3, 7)); nothing sensible goes deeper than a few levels.
MAX_KEY_DEPTH = 8
_KEY_PARTS = (str, bytes, int, float)
_KEY_FORM = "key (str, bytes, int, finite float, or a non-empty tuple of them, nested)"


def _check_key(value: object, where: str) -> object:
    kind = type(value)
    if kind is str:
        return value
    if kind is tuple and value and _key_tuple_ok(value, 1):  # type: ignore[arg-type]
        return value
    if kind in _KEY_PARTS and (kind is not float or math.isfinite(value)):  # type: ignore[arg-type]
        return value
    _fail(where, _KEY_FORM, value)


def _key_tuple_ok(value: tuple, depth: int) -> bool:
    for part in value:
        kind = type(part)
        if kind is str or kind is int:
            continue
        if kind is tuple:
            if not part or depth >= MAX_KEY_DEPTH or not _key_tuple_ok(part, depth + 1):
                return False
        elif kind is bytes or (kind is float and math.isfinite(part)):
            continue
        else:
            return False
    return True


def _check_serialized(value: object, where: str) -> object:
    if type(value) is not Serialized:
        _fail(where, "payload", value)
    return value


_SIMPLE: dict[object, Validator] = {
    str: _exact(str, "str"),
    bytes: _exact(bytes, "bytes"),
    int: _check_count,
    bool: _exact(bool, "bool"),
    float: _check_float,
    Serialized: _check_serialized,
    Any: _check_any,
}


def compile_type(tp: object) -> Validator:
    """A validator for one annotation; raises TypeError for unsupported ones."""
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated and _KeyMarker in args[1:]:
        return _check_key
    if origin is Annotated and _SignedMarker in args[1:]:
        return _exact(int, "int")
    if origin is Annotated and _NameMarker in args[1:]:
        return _check_name
    if origin in (typing.Union, types.UnionType):
        return _compile_union(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _compile_tuple(compile_type(args[0]))
    if origin is tuple and args and Ellipsis not in args:
        return _compile_record(tuple(compile_type(a) for a in args))
    if origin is dict and len(args) == 2:
        return _compile_dict(compile_type(args[0]), compile_type(args[1]))
    raise TypeError(f"unsupported message field type {tp!r}")


def _compile_union(args: tuple[object, ...]) -> Validator:
    nullable = type(None) in args
    rest = [a for a in args if a is not type(None)]
    if len(rest) != 1:
        raise TypeError("only `T | None` unions are supported in messages")
    inner = compile_type(rest[0])

    def check(value: object, where: str) -> object:
        if value is None and nullable:
            return None
        return inner(value, where)

    return check


def _compile_tuple(item: Validator) -> Validator:
    def check(value: object, where: str) -> object:
        if type(value) is not tuple:
            _fail(where, "array", value)
        if not value or item is _check_any:
            return value
        return tuple([item(v, where) for v in value])

    return check


def _compile_record(items: tuple[Validator, ...]) -> Validator:
    """A fixed-length array: tuple[A, B, C], each place of its own type."""
    size = len(items)

    def check(value: object, where: str) -> object:
        if type(value) is not tuple or len(value) != size:
            _fail(where, f"array of {size}", value)
        return tuple([item(v, where) for item, v in zip(items, value, strict=True)])

    return check


def _compile_dict(key: Validator, val: Validator) -> Validator:
    def check(value: object, where: str) -> object:
        if type(value) is not dict:
            _fail(where, "map", value)
        if not value:
            return value
        return {key(k, where): val(v, where) for k, v in value.items()}

    return check
