"""Rendering profiles into policy objects, safely.

Templates run in Jinja2's ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and three
extra guards:

* **Data is data.** Every ``{{ expression }}`` is emitted as a JSON value (JSON is YAML), so a
  namespace label or annotation holding ``"\\nkind: ClusterRoleBinding"`` stays one quoted string.
  Build compound strings inside the expression: ``{{ 'team-' ~ namespace.name }}``.
* **Bounded work.** Each render has a time limit. In the main thread (where the operator renders)
  it is a real wall-clock limit: a one-shot ``SIGALRM`` timer interrupts the template wherever it
  is, even inside one long Python-level filter (see ``_Alarm``). Everywhere, and as the only limit
  in other threads, the deadline is also checked on every call, attribute lookup, filter,
  operator and for-loop item, so no loop escapes it (a loop over an already-built sequence calls
  nothing else). Neither can stop a single C-level operation, hence the next guard.
  Memory is guarded *before* it is allocated: an operation whose result would be too big is
  refused from its arguments (``*``/``+``/``~``/``%`` on strings and lists, ``replace``,
  ``join``, ``indent``, ``wordwrap``, ``sum``, ``str.format`` and printf widths, integer
  arguments of filters and built-in methods, the size of values handed to filters and calls or
  emitted), the output of macros and blocks is capped like the output itself, and the output
  is capped; recursion ends in a clear error.
* **Allow-listed output.** Exactly one YAML document; only a NetworkPolicy in the target
  namespace or a Calico GlobalNetworkPolicy; the operator then sets name, namespace, labels and
  ownerReferences itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import re
import signal
import threading
import time
import types
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import yaml
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.filters import make_attrgetter
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import _PassArg
from markupsafe import Markup

from default_policy_operator.core import calico_selector
from default_policy_operator.core.model import Flavor, Profile
from default_policy_operator.core.normalize import spec_hash
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
    managed_labels,
    object_key,
    owner_reference,
)
from default_policy_operator.core.selector import to_calico

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
#: libyaml's parser when PyYAML was built with it (the wheels are): several times faster
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_OUTPUT_CHARS = 256 * 1024
MAX_VALUE_CHARS = 64 * 1024
#: A container handed to a filter or call may not print longer than this (many filters
#: stringify their arguments); big enough for all the annotations a namespace can carry.
MAX_ARGUMENT_CHARS = 1024 * 1024
#: Integer arguments of filters and built-in methods (widths, counts); ports and the like pass.
MAX_INT_ARGUMENT = 1_000_000
MAX_INT_BITS = 16_384
#: A filter evaluated while compiling (constant folding) may not produce more than this; a
#: bigger result is left to run time, where the render's budgets apply.
MAX_FOLDED_CHARS = 1024
DEFAULT_TIME_LIMIT = 1.0
#: What a missing namespace label or annotation reads as in a trial render.
TRIAL_VALUE = "dpo-trial"

NETWORK_POLICY_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
#: Host-endpoint features (doNotTrack, preDNAT, applyOnForward) are left out on purpose: a
#: namespace baseline has no business changing how nodes forward traffic.
CALICO_SPEC_KEYS = frozenset(
    {
        "order",
        "selector",
        "namespaceSelector",
        "serviceAccountSelector",
        "types",
        "ingress",
        "egress",
    }
)


class RenderError(Exception):
    """A policy that cannot be rendered; ``policy`` names it for the profile's status."""

    def __init__(self, policy: str, message: str) -> None:
        self.policy = policy
        self.message = message
        super().__init__(f"policy {policy!r}: {message}")


class _Budget(Exception):
    """Raised inside a render that exceeded its time or size budget."""


def _too_long(limit: int = MAX_VALUE_CHARS) -> _Budget:
    return _Budget(f"a value longer than {limit} characters")


# -- sizes, estimated before anything is allocated ----------------------------------------------


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def _rendered_size(value: Any, limit: int) -> int:
    """About ``len(json.dumps(value))`` (or ``len(str(value))``), counted only a little past
    ``limit``, without building the text.

    A shared sub-structure counts each time it occurs (the text repeats it) but is walked once,
    so ``[a, a]`` nested thirty times over is cheap to measure and measures huge. (Strings are
    measured inline: they are most of what there is, and a call each would double the cost.)
    """
    memo: dict[int, int] = {}

    def measure(item: Any) -> int:
        if isinstance(item, str | bytes):
            return len(item) + 2
        if item is None or isinstance(item, bool):
            return 5
        if isinstance(item, int):
            if -(10**15) < item < 10**15:
                return len(str(item))
            return item.bit_length() * 30103 // 100000 + 2
        if isinstance(item, float):
            return len(repr(item))
        pairs = isinstance(item, dict | ItemsView)
        if not pairs and not isinstance(
            item, list | tuple | set | frozenset | KeysView | ValuesView
        ):
            return 16  # Undefined, a macro, a generator...: printed short, if at all
        key = id(item)  # ``item`` stays alive during the walk, so its id stays unique
        if key in memo:
            return memo[key]
        memo[key] = 2  # a cycle (impossible to build in the sandbox) counts as nothing more
        total = 2
        if pairs:  # (an ItemsView builds its pairs on the fly: they are never memoised)
            for first, second in item.items() if isinstance(item, dict) else item:
                total += len(first) + 2 if type(first) is str else measure(first)
                total += len(second) + 4 if type(second) is str else measure(second) + 2
                if total > limit:
                    break
        else:
            for child in item:
                total += len(child) + 4 if type(child) is str else measure(child) + 2
                if total > limit:
                    break
        memo[key] = total
        return total

    return measure(value)


def _nesting_depth(value: Any) -> int:
    memo: dict[int, int] = {}

    def depth(item: Any) -> int:
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            return 0
        key = id(item)
        if key not in memo:
            memo[key] = 1
            memo[key] = 1 + max((depth(child) for child in children), default=0)
        return memo[key]

    return depth(value)


def _check_width(number: str) -> int:
    """A width or precision written in a format string."""
    digits = number.lstrip("0")
    if len(digits) > len(str(MAX_INT_ARGUMENT)) or (digits and int(digits) > MAX_INT_ARGUMENT):
        raise _Budget(f"a format width above {MAX_INT_ARGUMENT}")
    return int(digits or "0")


_DIGITS = re.compile(r"\d+")


def _check_format_spec(spec: str) -> int:
    """The widths in a ``str.format`` field's spec (after nested fields were filled in)."""
    return sum(_check_width(number) for number in _DIGITS.findall(spec))


def _number_at(fmt: str, i: int) -> tuple[str, int]:
    """A printf width or precision (digits or ``*``) starting at ``i``, and where it ends."""
    if fmt[i : i + 1] == "*":
        return "*", i + 1
    start = i
    while fmt[i : i + 1] in _ASCII_DIGITS:
        i += 1
    return fmt[start:i], i


_ASCII_DIGITS = frozenset("0123456789")


def _percent_specs(fmt: str) -> Iterator[tuple[str | None, str, str, str]]:
    """``(key, width, precision, conversion)`` of each ``%`` conversion, parsed as CPython does."""
    i, n = 0, len(fmt)
    while (i := fmt.find("%", i)) >= 0:
        i += 1
        key = None
        if fmt[i : i + 1] == "(":  # a mapping key; CPython balances the parentheses
            depth, start = 1, i + 1
            i += 1
            while i < n and depth:
                depth += {"(": 1, ")": -1}.get(fmt[i], 0)
                i += 1
            key = fmt[start : i - 1]
        while i < n and fmt[i] in "-+ #0":
            i += 1
        width, i = _number_at(fmt, i)
        precision = ""
        if fmt[i : i + 1] == ".":
            precision, i = _number_at(fmt, i + 1)
        if i < n and fmt[i] in "hlL":
            i += 1
        yield key, width, precision, fmt[i : i + 1]
        i += 1


def _check_percent(fmt: str | bytes, values: Any) -> None:
    """Refuse a printf-style ``fmt % values`` whose result would be too big, before running it."""
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    mapping = values if isinstance(values, Mapping) else None
    positional = list(values) if isinstance(values, tuple) else [values]
    total = len(text)
    for key, width, precision, conversion in _percent_specs(text):
        if conversion == "%":
            continue
        padding = 0
        for number in (width, precision):
            if number == "*":
                star = positional.pop(0) if positional else 0
                if isinstance(star, int) and abs(star) > MAX_INT_ARGUMENT:
                    raise _Budget(f"a format width above {MAX_INT_ARGUMENT}")
                padding += abs(star) if isinstance(star, int) else 0
            elif number:
                padding += _check_width(number)
        if key is not None and mapping is not None:
            value = mapping.get(key)
        elif positional:
            value = positional.pop(0)
        else:
            return  # too few values: Python raises its own TypeError
        total += padding + _rendered_size(value, MAX_VALUE_CHARS)
        total += 310 if conversion in "fF" else 0  # (%f spells out all of a float's digits)
        if total > MAX_VALUE_CHARS:
            raise _too_long()


def _check_replace(text: Any, old: Any, new: Any, count: Any) -> None:
    """``text.replace(old, new, count)`` for a ``str`` or ``bytes`` text."""
    if not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return  # Python raises a TypeError
    if len(new) <= len(old):
        return
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    if len(text) + found * (len(new) - len(old)) > MAX_VALUE_CHARS:
        raise _too_long()


def _join_items(items: Any, separator: int) -> list[Any]:
    """The items of a ``join``, collected while their joined size stays within budget."""
    sized = isinstance(items, str | list | tuple | dict | range)
    if sized and (len(items) - 1) * separator > MAX_VALUE_CHARS:
        raise _too_long()
    collected: list[Any] = []
    total = 0
    for item in items:
        total += separator if collected else 0
        total += len(item) if isinstance(item, str) else _rendered_size(item, MAX_VALUE_CHARS)
        if total > MAX_VALUE_CHARS:
            raise _too_long()
        collected.append(item)
    return collected


def _lines_of(text: str) -> int:
    return len(text.splitlines()) + 1


# Filter pre-checks: called with the filter's bound arguments (defaults applied), which they may
# replace (an iterator they had to consume), before the filter runs.


def _precheck_replace(arguments: dict[str, Any]) -> None:
    text, old, new = (str(arguments[name]) for name in ("s", "old", "new"))
    _check_replace(text, old, new, arguments["count"])


def _precheck_join(arguments: dict[str, Any]) -> None:
    arguments["value"] = _join_items(arguments["value"], len(str(arguments["d"])))


def _precheck_indent(arguments: dict[str, Any]) -> None:
    text, width = str(arguments["s"]), arguments["width"]
    indentation = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if len(text) + _lines_of(text) * (indentation + 1) > MAX_VALUE_CHARS:
        raise _too_long()


def _precheck_wordwrap(arguments: dict[str, Any]) -> None:
    text, width = str(arguments["s"]), arguments["width"]
    wrapstring = arguments["wrapstring"]
    joint = len(wrapstring) if isinstance(wrapstring, str) else 1
    lines = len(text) + 1
    if isinstance(width, int) and width > 0:  # two greedy lines together exceed the width
        lines = min(lines, 2 * (len(text) // width + 1) + _lines_of(text))
    if len(text) + lines * joint > MAX_VALUE_CHARS:
        raise _too_long()


def _precheck_format(arguments: dict[str, Any]) -> None:
    _check_percent(str(arguments["value"]), arguments["kwargs"] or arguments["args"])


def _precheck_sum(arguments: dict[str, Any]) -> None:
    start = arguments["start"]
    if not isinstance(start, list | tuple):
        return  # numbers: nothing grows
    items = list(arguments["iterable"])
    if arguments["attribute"] is not None:
        getter = make_attrgetter(arguments["environment"], arguments["attribute"])
        items = [getter(item) for item in items]
        arguments["attribute"] = None
    if len(start) + sum(_size_of(item) for item in items) > MAX_VALUE_CHARS:
        raise _too_long()
    arguments["iterable"] = items


_FILTER_PRECHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "replace": _precheck_replace,
    "join": _precheck_join,
    "indent": _precheck_indent,
    "wordwrap": _precheck_wordwrap,
    "format": _precheck_format,
    "sum": _precheck_sum,
}


def _precheck_method(
    owner: Any, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Pre-check a call of a ``str``/``bytes`` method that can grow its result."""
    if name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"))
    elif name == "join" and args:
        return (_join_items(args[0], len(owner)), *args[1:])
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
        if isinstance(tabsize, int) and len(owner) + tabs * tabsize > MAX_VALUE_CHARS:
            raise _too_long()
    elif name == "translate" and args and isinstance(owner, str):
        table = args[0]
        values = table.values() if isinstance(table, Mapping) else table
        if isinstance(values, Mapping | ValuesView | list | tuple):
            longest = max((len(v) for v in values if isinstance(v, str)), default=1)
            if len(owner) * longest > MAX_VALUE_CHARS:
                raise _too_long()
    return args


def _bounded_json_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` for the ``tojson`` filter: encoded piece by piece within the value budget
    (pretty-printing multiplies the indent by the depth and the number of lines)."""
    indent = kwargs.get("indent")
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step * _nesting_depth(value) > MAX_VALUE_CHARS:
        raise _too_long()
    chunks: list[str] = []
    size = 0
    for chunk in json.JSONEncoder(**kwargs).iterencode(value):
        size += len(chunk)
        if size > MAX_VALUE_CHARS:
            raise _too_long()
        chunks.append(chunk)
    return "".join(chunks)


def _undefined_in_json(value: Any) -> Any:
    """``json.dumps`` hook: an undefined name inside a list or mapping fails as undefined."""
    if isinstance(value, jinja2.runtime.Undefined):
        value._fail_with_undefined_error()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_SCALARS = frozenset({int, float, bool, type(None)})


def _as_yaml_value(value: Any) -> str:
    """``finalize`` hook: every expression becomes a JSON (hence YAML flow) value."""
    if isinstance(value, jinja2.runtime.Undefined):
        value._fail_with_undefined_error()  # raises, naming the missing variable or key
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise _too_long()
    elif type(value) not in _SCALARS and _rendered_size(value, MAX_VALUE_CHARS) > MAX_VALUE_CHARS:
        raise _too_long()  # before json.dumps() spells out a value that shares its parts
    try:
        return json.dumps(value, sort_keys=True, default=_undefined_in_json)
    except TypeError as exc:
        raise jinja2.TemplateRuntimeError(f"cannot emit {type(value).__name__}: {exc}") from exc


# -- str.format --------------------------------------------------------------------------------


class _GuardedFormatter(SandboxedFormatter):
    """Jinja's sandboxed formatter, checking each field's widths and the running size of the
    result before the field is converted (``!r``) or formatted. One instance per call."""

    size = 0

    def _check(self, value: Any, padding: int = 0) -> None:
        if self.size + padding + _rendered_size(value, MAX_VALUE_CHARS) > MAX_VALUE_CHARS:
            raise _too_long()

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        self._check(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._check(value, _check_format_spec(format_spec))
        result = super().format_field(value, format_spec)
        self.size += len(result)
        if self.size > MAX_VALUE_CHARS:
            raise _too_long()
        return result


class _GuardedEscapeFormatter(_GuardedFormatter, SandboxedEscapeFormatter):
    pass


# -- generated code ----------------------------------------------------------------------------


class _OutputBuffer(list[str]):
    """Where a macro, call block, filter block or block ``set`` collects its output: capped like
    the render's output, as it grows (the text is only joined at the end)."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def append(self, item: str, /) -> None:
        self.size += len(item) if isinstance(item, str) else 0
        if self.size > MAX_OUTPUT_CHARS:
            raise _Budget(f"{MAX_OUTPUT_CHARS} characters of output")
        super().append(item)

    def extend(self, items: Iterable[str], /) -> None:
        for item in items:
            self.append(item)


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the hooks the budgets need in the generated code.

    * every ``{% for %}`` iterates through ``environment.guard_iter()``, which checks the
      deadline per item: a loop over an already-built sequence calls nothing else that would;
    * ``~`` calls ``environment.concat_values()``, which measures before it joins;
    * output buffers (macros, call/filter blocks, block ``set``) are ``_OutputBuffer``\\ s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()  # ids of the For nodes' iterables (Jinja
        # forbids custom node types, so the wrapping happens when the iterable is written out)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.guard_iter(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.volatile"  # (what Jinja's own code generator tests)
        else:
            markup = str(bool(frame.eval_ctx.autoescape))
        self.write(f"environment.concat_values({markup}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# -- the wall-clock limit ----------------------------------------------------------------------


class _Alarm:
    """A hard time limit for renders in the main thread: a one-shot ``ITIMER_REAL`` timer whose
    ``SIGALRM`` handler raises ``_Budget`` wherever the template happens to be.

    Python runs signal handlers in the main thread only, so elsewhere renders rely on the
    deadline checks alone; so do straight-line templates, which cannot run long (and are spared
    the system calls). The timer is process-wide: a render nested in another (say, through a
    callable in the context) relies on the checks while the outer render's alarm stays armed,
    and a timer somebody else had running is paused for the render and re-armed afterwards.

    The handler only raises while ``armed``; the flag is cleared (by the handler itself, or
    first thing when the render ends) before the timer is cancelled and the previous handler
    restored, so a late signal can never raise after the render returned, and cleanup runs in
    nested ``finally`` blocks that a raising handler cannot skip.
    """

    def __init__(self) -> None:
        self.armed = False
        self.active = False

    def usable(self) -> bool:
        return (
            hasattr(signal, "setitimer")
            and not self.active
            and threading.current_thread() is threading.main_thread()
        )

    def _fire(self, signum: int, frame: types.FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise _Budget("the time limit")

    def run(self, seconds: float, produce: Callable[[], str]) -> str:
        self.active = True
        try:
            paused = signal.setitimer(signal.ITIMER_REAL, 0)
            paused_at = time.monotonic()
            previous = _set_handler(signal.SIGALRM, self._fire)
            cancelled = False
            try:
                try:
                    self.armed = True
                    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))
                    return produce()
                finally:
                    self.armed = False  # from here on, a late SIGALRM is ignored
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    cancelled = True
            finally:
                if not cancelled:  # the handler cut in above, before the timer was cancelled
                    signal.setitimer(signal.ITIMER_REAL, 0)
                _set_handler(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
                if paused[0] > 0:
                    left = paused[0] - (time.monotonic() - paused_at)
                    signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), paused[1])
        finally:
            self.active = False


_ALARM = _Alarm()

try:  # ``signal.signal`` minus its enum conversions: several times faster (a render calls it twice)
    _set_handler: Callable[[int, Any], Any] = importlib.import_module("_signal").signal
except (ImportError, AttributeError):  # pragma: no cover - not CPython
    _set_handler = signal.signal


# -- the environment ---------------------------------------------------------------------------


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus a per-render deadline and size checks (see module docstring)."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            finalize=_as_yaml_value,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.deadline = float("inf")
        self.rendering = 0  # > 0 while a render runs; otherwise filters run to fold constants
        self.filters = {name: self._guard(name, f, "filter") for name, f in self.filters.items()}
        self.tests = {name: self._guard(name, t, "test") for name, t in self.tests.items()}  # type: ignore[arg-type]
        for unsafe in ("attr", "xmlattr", "urlize", "pprint"):
            self.filters.pop(unsafe, None)
        # Jinja's own ``namespace()`` global would shadow our ``namespace`` variable where it is
        # absent (the Calico flavor); ``lipsum`` and ``cycler``/``joiner`` have no use here.
        for name in ("namespace", "lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)
        self.policies["json.dumps_function"] = _bounded_json_dumps

    def _tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Budget("the time limit")

    # hooks called from the generated code (see _GuardedCodeGenerator)

    def guard_iter(self, iterable: Any) -> Iterator[Any]:
        return self._ticking(iter(iterable))  # iter() now: an undefined iterable fails here

    def _ticking(self, iterator: Iterator[Any]) -> Iterator[Any]:
        clock, deadline = time.monotonic, self.deadline  # (a render's deadline is fixed)
        for item in iterator:
            if clock() > deadline:
                raise _Budget("the time limit")
            yield item

    def concat_values(self, markup: bool, values: tuple[Any, ...]) -> str:
        total = 0
        for value in values:
            size = len(value) if isinstance(value, str) else _rendered_size(value, MAX_VALUE_CHARS)
            total += size
            if total > MAX_VALUE_CHARS:
                raise _too_long()
        return markup_join(values) if markup else str_join(values)

    def output_buffer(self) -> _OutputBuffer:
        return _OutputBuffer()

    # arguments and results of filters, tests and calls

    @staticmethod
    def _check_arguments(values: Iterable[Any], integers: Iterable[Any], what: str) -> None:
        for value in integers:
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and abs(value) > MAX_INT_ARGUMENT
            ):
                raise _Budget(f"a {what} argument above {MAX_INT_ARGUMENT}")
        for value in values:
            if isinstance(value, str | bytes):
                size = len(value)
            elif isinstance(value, dict | list | tuple | set | frozenset | ItemsView | ValuesView):
                size = _rendered_size(value, MAX_ARGUMENT_CHARS)
            else:
                continue
            if size > MAX_ARGUMENT_CHARS:
                raise _Budget(f"a {what} argument longer than {MAX_ARGUMENT_CHARS} characters")

    def _check_result(self, result: Any) -> None:
        if _size_of(result) > MAX_VALUE_CHARS:
            raise _too_long()
        if not self.rendering and _rendered_size(result, MAX_FOLDED_CHARS) > MAX_FOLDED_CHARS:
            raise _Budget("constant folding")  # (caught by Jinja: evaluated at run time instead)

    def _guard(self, name: str, func: Callable[..., Any], what: str) -> Callable[..., Any]:
        skip = 0 if _PassArg.from_obj(func) is None else 1  # the context/environment argument
        precheck = _FILTER_PRECHECKS.get(name) if what == "filter" else None
        signature = inspect.signature(func) if precheck else None

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            # (the value being filtered or tested is data; the other integers may be widths)
            self._check_arguments(
                (*args[skip:], *kwargs.values()), (*args[skip + 1 :], *kwargs.values()), what
            )
            if precheck is not None and signature is not None:
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError:
                    pass  # the filter itself raises the TypeError
                else:
                    bound.apply_defaults()
                    precheck(bound.arguments)
                    args, kwargs = bound.args, bound.kwargs
            result = func(*args, **kwargs)
            self._check_result(result)
            return result

        return guarded

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        if isinstance(__obj, LoopContext) and args:  # ``loop(children)`` in a recursive loop
            args = (self.guard_iter(args[0]), *args[1:])
        builtin = isinstance(__obj, types.BuiltinFunctionType)
        self._check_arguments(
            (*args, *kwargs.values()), (*args, *kwargs.values()) if builtin else (), "call"
        )
        owner = getattr(__obj, "__self__", None) if builtin else None
        if isinstance(owner, str | bytes):
            args = _precheck_method(owner, __obj.__name__, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        self._check_result(result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format``/``format_map``, with a size-checking formatter."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        str_type = type(owner)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            formatter: SandboxedFormatter
            if isinstance(owner, Markup):
                formatter = _GuardedEscapeFormatter(self, escape=owner.escape)
            else:
                formatter = _GuardedFormatter(self)
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise _Budget("an exponent above 64")
        if operator in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            # One big-integer operation can outlast the deadline: bound the result's size.
            bits = abs(left).bit_length()
            bits = bits * abs(right) if operator == "**" else bits + abs(right).bit_length()
            if bits > MAX_INT_BITS:
                raise _Budget(f"an integer above {MAX_INT_BITS} bits")
        if operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 1
            if (_size_of(left) + _size_of(right)) * max(count, 1) > MAX_VALUE_CHARS:
                raise _too_long()
        if operator == "+" and _size_of(left) + _size_of(right) > MAX_VALUE_CHARS:
            raise _too_long()
        if operator == "%" and isinstance(left, str | bytes):
            _check_percent(left, right)
        result = super().call_binop(context, operator, left, right)
        if _size_of(result) > MAX_VALUE_CHARS:
            raise _too_long()
        return result


#: What can make a template run long: loops, macros (recursion), calls and filters.
_LASTING_NODES = (
    nodes.For,
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.Call,
    nodes.Filter,
)


class _AnyKey(dict[str, str]):
    """The trial's namespace labels and annotations: every key is there, reading TRIAL_VALUE."""

    def __missing__(self, key: str) -> str:
        return TRIAL_VALUE


@dataclass(frozen=True)
class RenderedObject:
    key: ObjectKey
    policy: str
    body: dict[str, Any]
    spec_hash: str = ""  # precomputed when known (shared documents); else Desired computes it


class Renderer:
    """Renders built-in and custom templates; one instance per process (compiled-template cache)."""

    def __init__(
        self, template_dir: Path = TEMPLATE_DIR, time_limit: float = DEFAULT_TIME_LIMIT
    ) -> None:
        self._env = _GuardedEnvironment()
        self._template_dir = template_dir
        self._time_limit = time_limit
        self._compiled: dict[str, tuple[jinja2.Template, bool, bool]] = {}
        self._documents: dict[tuple[str, str], Any] = {}
        self._spec_hashes: dict[tuple[str, str], str] = {}
        self._builtin_sources: dict[str, str] = {}

    # -- templates -------------------------------------------------------------------------

    def _builtin_source(self, flavor: Flavor, policy: str) -> str:
        folder = "calico" if flavor is Flavor.CALICO else "networkpolicy"
        path = f"{folder}/{policy}.yaml.j2"
        if path not in self._builtin_sources:
            self._builtin_sources[path] = (self._template_dir / path).read_text()
        return self._builtin_sources[path]

    def compile(self, source: str, policy: str) -> tuple[jinja2.Template, bool]:
        """Compile (cached); the flag says whether the template reads ``namespace``."""
        template, uses_namespace, _ = self._compile(source, policy)
        return template, uses_namespace

    def _compile(self, source: str, policy: str) -> tuple[jinja2.Template, bool, bool]:
        """Also says whether the template is straight-line: no loop, macro, call or filter, so
        it runs in time proportional to its length (the built-ins for NetworkPolicy)."""
        cached = self._compiled.get(source)
        if cached is not None:
            return cached
        try:
            ast = self._env.parse(source)
            # (jinja2.meta misses "namespace": it is also the name of a Jinja global we remove)
            uses_namespace = any(n.name == "namespace" for n in ast.find_all(jinja2.nodes.Name))
            straight = next(ast.find_all(_LASTING_NODES), None) is None
            template = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            message = f"template syntax error on line {exc.lineno}: {exc.message}"
            raise RenderError(policy, message) from None
        except (RecursionError, SyntaxError):  # Python's own limits on the compiled template
            raise RenderError(policy, "template nests too deeply") from None
        if len(self._compiled) > 1024:  # profiles come and go; keep the cache bounded
            self._compiled.clear()
        self._compiled[source] = (template, uses_namespace, straight)
        return template, uses_namespace, straight

    def _render_text(
        self, template: jinja2.Template, context: Mapping[str, Any], alarm: bool = True
    ) -> str:
        """Render within the time limit: a wall-clock alarm in the main thread (see ``_Alarm``),
        plus the deadline checks everywhere. A straight-line template (``alarm=False``) cannot
        run long enough to need the alarm and is spared its system calls. Nesting-safe: the
        outer deadline is restored."""
        env = self._env
        outer_deadline = env.deadline
        env.deadline = min(outer_deadline, time.monotonic() + self._time_limit)
        env.rendering += 1
        try:
            produce = functools.partial(self._collect, template, context)
            if alarm and _ALARM.usable():
                return _ALARM.run(env.deadline - time.monotonic(), produce)
            return produce()
        finally:
            env.rendering -= 1
            env.deadline = outer_deadline

    @staticmethod
    def _collect(template: jinja2.Template, context: Mapping[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        stream: Iterator[str] = template.generate(**context)
        for chunk in stream:
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _Budget(f"{MAX_OUTPUT_CHARS} characters of output")
            chunks.append(chunk)
        return "".join(chunks)

    def render_document(self, source: str, policy: str, context: Mapping[str, Any]) -> Any:
        """Render one template to the single YAML document it must produce."""
        template, _, straight = self._compile(source, policy)
        try:
            text = self._render_text(template, context, alarm=not straight)
        except jinja2.UndefinedError as exc:
            raise RenderError(policy, f"undefined variable: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise RenderError(policy, f"blocked by the template sandbox: {exc}") from None
        except _Budget as exc:
            raise RenderError(policy, f"template exceeded {exc}") from None
        except RecursionError:
            raise RenderError(policy, "template recursed too deeply") from None
        except MemoryError:
            raise RenderError(policy, "template ran out of memory") from None
        except Exception as exc:  # any other template runtime failure is the template's fault
            raise RenderError(policy, f"template failed: {type(exc).__name__}: {exc}") from None
        try:
            documents = [d for d in yaml.load_all(text, Loader=SAFE_LOADER) if d is not None]
        except yaml.YAMLError as exc:
            raise RenderError(policy, f"output is not valid YAML: {exc}") from None
        if len(documents) != 1:
            raise RenderError(policy, f"must render exactly one document, got {len(documents)}")
        # YAML aliases share nodes: a few hundred characters can stand for millions of them,
        # which hashing, copying and the API request would all expand.
        if _rendered_size(documents[0], MAX_OUTPUT_CHARS) > MAX_OUTPUT_CHARS:
            raise RenderError(
                policy, f"template exceeded {MAX_OUTPUT_CHARS} characters of output (YAML aliases)"
            )
        return documents[0]

    # -- profile rendering -----------------------------------------------------------------

    def render_namespace(
        self, profile: Profile, namespace: Mapping[str, Any]
    ) -> list[RenderedObject]:
        """Every NetworkPolicy ``profile`` wants in ``namespace``; raises on the first failure."""
        objects, errors = self.render_namespace_partial(profile, namespace)
        if errors:
            raise errors[0]
        return objects

    def render_namespace_partial(
        self, profile: Profile, namespace: Mapping[str, Any]
    ) -> tuple[list[RenderedObject], list[RenderError]]:
        """Render policy by policy: one failing template must not cost a namespace the rest."""
        assert profile.flavor is Flavor.NETWORK_POLICY
        name = str(namespace["name"])
        context = {
            "namespace": {
                "name": name,
                "labels": dict(namespace.get("labels") or {}),
                "annotations": dict(namespace.get("annotations") or {}),
            },
            "profile": {"name": profile.name, "priority": profile.priority},
        }
        profile_data = {"name": profile.name, "priority": profile.priority}
        objects, errors = [], []
        for policy, source, params in self._sources(profile):
            try:
                _, uses_namespace = self.compile(source, policy)
                if uses_namespace:
                    document = self.render_document(source, policy, {**context, "params": params})
                    objects.append(self._stamp(profile, policy, document, name))
                    continue
                key = (source, json.dumps([profile_data, params], sort_keys=True, default=str))
                obj = self._stamp(profile, policy, self._shared_document(key, policy), name)
                known = self._spec_hashes.get(key)
                if known is None:  # the same spec everywhere: hash it once
                    known = self._spec_hashes[key] = spec_hash(obj.key.kind, obj.body["spec"])
                objects.append(dataclasses.replace(obj, spec_hash=known))
            except RenderError as exc:
                errors.append(exc)
        return objects, errors

    def _shared_document(self, key: tuple[str, str], policy: str) -> Any:
        """A template that does not read ``namespace`` renders the same everywhere: once.

        Rendering and YAML parsing dominate planning at scale (thousands of namespaces, each
        planned again after every write); this makes the built-ins a dictionary lookup plus a
        copy, so that no caller can change what the next one gets. ``key`` is the template
        source and the JSON of the ``profile`` and ``params`` context.
        """
        document = self._documents.get(key)
        if document is None:
            source, data = key
            profile, params = json.loads(data)
            document = self.render_document(source, policy, {"profile": profile, "params": params})
            if len(self._documents) > 4096:  # profiles come and go; keep the caches bounded
                self._documents.clear()
                self._spec_hashes.clear()
            self._documents[key] = document
        return _copy_tree(document)

    def render_calico(
        self, profile: Profile, governed: calico_selector.Node
    ) -> list[RenderedObject]:
        """Every GlobalNetworkPolicy ``profile`` wants; ``governed`` picks governed namespaces.

        A template's own namespaceSelector (checked by ``_stamp``) is ANDed in as a syntax tree,
        so it can narrow the governed set but never widen it.
        """
        assert profile.flavor is Flavor.CALICO
        context = {"profile": {"name": profile.name, "priority": profile.priority}}
        out = []
        for policy, source, params in self._sources(profile):
            document = self.render_document(source, policy, {**context, "params": params})
            obj = self._stamp(profile, policy, document, None)
            spec = obj.body["spec"]
            own = calico_selector.parse(spec.get("namespaceSelector") or "")
            spec["namespaceSelector"] = calico_selector.to_text(
                calico_selector.conjoin(governed, own)
            )
            out.append(obj)
        return out

    def trial(self, profile: Profile) -> None:
        """Render ``profile`` once against a sample namespace, before it may write anything.

        Catches syntax errors, sandbox violations, undefined names and off-allow-list output up
        front, so an invalid edit is rejected as a whole and the last good version stays in
        force. A missing namespace label or annotation is data-dependent (it only fails where it
        is missing), so the sample namespace has every label and annotation, each reading
        ``TRIAL_VALUE``; any other undefined name fails here as it would everywhere.
        """
        sample_name = "dpo-trial"
        sample = {"name": sample_name, "labels": _AnyKey(), "annotations": _AnyKey()}
        for policy, source, params in self._sources(profile):
            context: dict[str, Any] = {
                "profile": {"name": profile.name, "priority": profile.priority},
                "params": params,
            }
            if profile.flavor is Flavor.NETWORK_POLICY:
                context["namespace"] = sample
            document = self.render_document(source, policy, context)
            namespace = None if profile.flavor is Flavor.CALICO else sample_name
            self._stamp(profile, policy, document, namespace)

    def _sources(self, profile: Profile) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for policy in profile.policy_names():
            custom = next((c for c in profile.custom_policies if c.name == policy), None)
            if custom is not None:
                yield policy, custom.template, {}
            else:
                yield policy, self._builtin_source(profile.flavor, policy), _params(profile, policy)

    def _stamp(
        self, profile: Profile, policy: str, document: Any, namespace: str | None
    ) -> RenderedObject:
        """Check the output allow-list, then set the metadata the operator owns."""
        calico = profile.flavor is Flavor.CALICO
        if not isinstance(document, dict):
            raise RenderError(policy, "must render a YAML mapping")
        extra = set(document) - {"apiVersion", "kind", "metadata", "spec"}
        if extra:
            raise RenderError(policy, f"unexpected top-level field(s): {', '.join(sorted(extra))}")
        want_kind = GLOBAL_NETWORK_POLICY if calico else NETWORK_POLICY
        want_api = profile.calico_api_version if calico else "networking.k8s.io/v1"
        kind, api = document.get("kind"), document.get("apiVersion", want_api)
        if kind != want_kind or api != want_api:
            raise RenderError(
                policy,
                f"renders {api}/{kind}, but this profile may only create {want_api}/{want_kind}",
            )
        metadata = document.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise RenderError(policy, "metadata must be a mapping")
        extra = set(metadata) - {"name", "namespace", "labels"}
        if extra:
            raise RenderError(policy, f"metadata may not set {', '.join(sorted(extra))}")
        if "namespace" in metadata and metadata["namespace"] != namespace:
            target = f"namespace {namespace!r}" if namespace else "no namespace (cluster-scoped)"
            raise RenderError(
                policy, f"renders into namespace {metadata['namespace']!r}, must be {target}"
            )
        labels = metadata.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise RenderError(policy, "metadata.labels must map strings to strings")
        spec = document.get("spec")
        if not isinstance(spec, dict):
            raise RenderError(policy, "spec must be a mapping")
        allowed = CALICO_SPEC_KEYS if calico else NETWORK_POLICY_SPEC_KEYS
        extra = set(spec) - allowed
        if extra:
            raise RenderError(policy, f"spec may not set {', '.join(sorted(extra))}")
        if calico:
            try:
                calico_selector.check_policy_selectors(spec)
            except calico_selector.CalicoSelectorError as exc:
                raise RenderError(policy, str(exc)) from None
            spec.setdefault("order", profile.calico_order)
            spec.setdefault("selector", "all()")
            if not spec.get("types"):
                # Calico infers Ingress-only for a rule-less policy: always be explicit.
                raise RenderError(policy, "a GlobalNetworkPolicy must list spec.types explicitly")
        else:
            spec.setdefault("podSelector", {})
        key = object_key(profile, policy, namespace)
        new_meta: dict[str, Any] = {
            "name": key.name,
            "labels": {**labels, **managed_labels(profile.name, policy)},
        }
        if namespace is not None:
            new_meta["namespace"] = namespace
        if profile.uid:
            new_meta["ownerReferences"] = [owner_reference(profile)]
        body = {"apiVersion": want_api, "kind": want_kind, "metadata": new_meta, "spec": spec}
        return RenderedObject(key=key, policy=policy, body=body)


def _copy_tree(value: Any) -> Any:
    """A deep copy of parsed YAML (dicts, lists, scalars): several times faster than deepcopy."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _types(ingress: bool, egress: bool) -> list[str]:
    return [t for t, on in (("Ingress", ingress), ("Egress", egress)) if on]


def _params(profile: Profile, policy: str) -> dict[str, Any]:
    """Parameters handed to a built-in template."""
    calico = {"apiVersion": profile.calico_api_version, "order": profile.calico_order}
    if policy == "deny-all":
        types = _types(profile.deny_all.ingress, profile.deny_all.egress)
        return {"policyTypes": types, "types": types, **calico}
    if policy == "allow-dns":
        dns = profile.allow_dns
        calico_dns = profile.flavor is Flavor.CALICO
        return {
            "namespace": dns.namespace,
            "namespaceSelector": f"projectcalico.org/name == {json.dumps(dns.namespace)}",
            "podSelector": to_calico(dns.pod_selector) if calico_dns else dns.pod_selector.as_k8s(),
            "ports": [p.as_k8s() for p in dns.ports],
            **calico,
        }
    directions = profile.allows(policy)  # only the directions deny-all denies
    types = _types(directions.ingress, directions.egress)
    return {
        "ingress": directions.ingress,
        "egress": directions.egress,
        "policyTypes": types,
        "types": types,
        "kubeSystemSelector": 'projectcalico.org/name == "kube-system"',
        **calico,
    }
