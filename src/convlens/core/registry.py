"""One registry per kind of thing, each entry carrying what the faces need.

convlens keeps a table for every kind of pluggable thing: attribution methods (per task),
model file formats, zoo models, explorer panels and job kinds. Each table is a
:class:`Registry`; an entry is added where the thing is defined (``@register(...)`` next to
the code), and the CLI, the explorer's forms, the API's validation and the tests read the
same table. A family registers itself when its package is imported.

:class:`Setting` describes one option of an entry: its type, default, range or choices and a
line of help. It parses a value from text (a CLI flag, a query string) or JSON, checking it,
so every face refuses the same bad value with the same message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from convlens.core.naming import unknown

T = TypeVar("T")

TYPES = ("int", "float", "bool", "choice", "str", "reference")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One option of a registered entry.

    ``type`` is one of ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``), ``str``
    or ``reference`` (one of ``choices``, an ``r,g,b`` colour in [0, 1] or a number: the IG
    baselines and occlusion fills of :mod:`convlens.core.references`); ``min`` / ``max``
    bound numbers (inclusive); ``optional`` admits ``None`` (a
    default of ``None`` means "decided by the method", e.g. a batch size from the memory
    budget); ``form`` says whether the explorer shows it as a form control (expert settings
    such as batch sizes stay in the API and the CLI only).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    optional: bool = False
    form: bool = True

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(
                f"setting {self.name!r}: expected a type in {TYPES}, got {self.type!r}"
            )

    def parse(self, raw: Any) -> Any:
        """``raw`` (text from a flag or a query, or a JSON value) as this setting's type,
        checked against its range or choices; a ``ValueError`` says what was expected."""
        if raw is None or (self.optional and isinstance(raw, str) and raw.lower() == "none"):
            if self.optional or self.default is None:
                return None
            raise ValueError(f"setting {self.name!r}: expected {self.expected()}, got None")
        value = self._typed(raw)
        if self.type == "reference" and not isinstance(value, str):
            return value
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(self.choices[:12]) + (", ..." if len(self.choices) > 12 else "")
            raise ValueError(f"setting {self.name!r}: expected one of {shown}; got {raw!r}")
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise ValueError(
                f"setting {self.name!r}: expected a value in [{_num(self.min)}, "
                f"{_num(self.max)}], got {raw!r}"
            )
        return value

    def _typed(self, raw: Any) -> Any:
        bad = ValueError(f"setting {self.name!r}: expected {self.expected()}, got {_short(raw)}")
        if self.type == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            raise bad
        if self.type in ("int", "float"):
            if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
                raise bad
            try:
                number = float(raw)
            except ValueError:
                raise bad from None
            if self.type == "float":
                if number != number or number in (float("inf"), float("-inf")):
                    raise bad
                return number
            if not number.is_integer():
                raise bad
            return int(number)
        if self.type == "reference":
            return _reference(raw, bad)
        if not isinstance(raw, str):
            raise bad
        return raw

    def expected(self) -> str:
        """What a value must be, in words."""
        if self.type == "choice" and self.choices is not None:
            return "one of " + ", ".join(self.choices[:12])
        if self.type == "reference" and self.choices is not None:
            return "one of " + ", ".join(self.choices) + ", an r,g,b colour in [0, 1] or a number"
        kind = {"int": "int", "float": "float", "bool": "bool (true or false)"}.get(
            self.type, "text"
        )
        if self.min is not None or self.max is not None:
            kind += f" in [{_num(self.min)}, {_num(self.max)}]"
        return kind + (" or none" if self.optional else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the explorer's form controls, ``convlens methods --json``)."""
        out = {k: v for k, v in self.__dict__.items() if k != "choices"}
        out["choices"] = list(self.choices) if self.choices is not None else None
        return out


def _reference(raw: Any, bad: ValueError) -> Any:
    """A named reference, an (r, g, b) colour in [0, 1] or a number, from text or JSON."""
    if isinstance(raw, bool):
        raise bad
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, (list, tuple)):
        parts: list[Any] = list(raw)
    elif isinstance(raw, str):
        if "," not in raw:
            try:
                return float(raw)
            except ValueError:
                return raw.strip()
        parts = raw.split(",")
    else:
        raise bad
    try:
        colour = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise bad from None
    if len(colour) != 3 or not all(0.0 <= v <= 1.0 for v in colour):
        raise bad
    return colour


def _num(value: float | None) -> str:
    if value is None:
        return "-inf"
    return str(int(value)) if float(value).is_integer() else str(value)


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Spec:
    """What a registration says about one option; the type and default come from the
    function's signature (:func:`settings_from_signature`)."""

    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""
    type: str | None = None
    form: bool = True


def spec(
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: tuple[str, ...] | list[str] | None = None,
    type: str | None = None,
    form: bool = True,
) -> Spec:
    """A setting's range or choices and help, for ``@register(..., settings={name: spec()})``."""
    return Spec(min, max, step, tuple(choices) if choices is not None else None, help, type, form)


def settings_from_signature(
    fn: Callable[..., Any], specs: Mapping[str, Spec], *, skip: tuple[str, ...] = ()
) -> tuple[Setting, ...]:
    """The :class:`Setting` of every keyword-only parameter of ``fn`` that ``specs`` names or
    whose default is a plain bool, number or string; parameters in ``skip`` and those with
    object defaults (callables, tensors) that ``specs`` does not type are not settings."""
    out = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name in skip:
            continue
        given = specs.get(param.name)
        default = None if param.default is inspect.Parameter.empty else param.default
        kind = given.type if given is not None and given.type else _type_of(default, given)
        if kind is None:
            continue
        given = given or Spec()
        choices = given.choices
        if kind == "choice" and choices is None:
            choices = (str(default),)
        if (
            kind in ("choice", "reference")
            and default is not None
            and choices
            and default not in choices
        ):
            choices = (str(default), *choices)
        out.append(
            Setting(
                param.name,
                kind,
                default,
                given.min,
                given.max,
                given.step,
                choices,
                given.help,
                optional=default is None,
                form=given.form,
            )
        )
    unknown_specs = set(specs) - {s.name for s in out}
    if unknown_specs:
        raise ValueError(
            f"{fn.__name__}: settings {sorted(unknown_specs)} are not keyword-only parameters"
        )
    return tuple(out)


def _type_of(default: Any, given: Spec | None) -> str | None:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "choice" if given is not None and given.choices is not None else "str"
    if default is None and given is not None and given.choices is not None:
        return "choice"
    return None


def parse_settings(
    settings: tuple[Setting, ...], given: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """``given`` (name -> text or JSON value) checked against ``settings``; an unknown name is
    refused with the close ones (a long list of unknown names is cut short)."""
    known = {s.name: s for s in settings}
    out = {}
    for name, raw in given.items():
        if name not in known:
            raise ValueError(str(unknown(f"setting of {what}", str(name)[:64], list(known))))
        out[name] = known[name].parse(raw)
    return out


@dataclass
class Registry(Generic[T]):
    """Entries of one kind by name, with aliases; unknown names list the close ones."""

    kind: str
    entries: dict[str, T] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.entries[name] = entry
        for alias in aliases:
            self.aliases[alias.lower()] = name
        return entry

    def remove(self, name: str) -> None:
        """Take ``name`` (and its aliases) out of the table (a plugin's or a test's entry)."""
        del self.entries[name]
        for alias in [a for a, n in self.aliases.items() if n == name]:
            del self.aliases[alias]

    def get(self, name: str) -> T:
        key = str(name).strip()
        if key not in self.entries:
            key = self.aliases.get(key.lower(), key)
        if key not in self.entries:
            raise unknown(self.kind, str(name), [*self.entries, *self.aliases])
        return self.entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self.entries or self.aliases.get(name.lower()) in self.entries
        )

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self.entries.items())
