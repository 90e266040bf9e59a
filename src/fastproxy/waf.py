"""Attack-pattern rules: a small built-in WAF (issue 7).

One :class:`Waf` per distinct WAF setting (a route's rule sets, custom rules
and exclusions) is built when the config loads; the request path calls
:meth:`Waf.inspect` once per request with the method, the raw path and query,
the header fields and at most ``body_limit`` bytes of the body.

How a request is looked at
--------------------------
Every value is decoded once, into a ``str`` that holds one character per byte
(latin-1), before any rule sees it:

* percent-decoding, twice when the first pass leaves escapes (``%252e`` is
  ``.``), IIS ``%uXXXX`` escapes and overlong UTF-8 for ``.``, ``/`` and ``\\``;
* ``+`` as a space in the query, form bodies and cookies;
* NUL bytes are noted (the ``control`` set reports them) and then removed, so
  ``<scr%00ipt>`` reads as ``<script>`` for the other sets;
* built-in rules see the value lower-cased (ASCII); the path also has
  backslashes turned into slashes.

Values are grouped by *kind*: ``path``; ``query`` (names and values),
``cookie`` (names and values), ``header`` (the values of every field except
the structured ones in :data:`SKIPPED_HEADERS` and
:data:`SKIPPED_HEADER_PREFIXES`: Accept*, Sec-*, Host, Authorization, Cookie,
If-*...; the Referer is read as a URL and its query parameters) and ``form``
fields (``application/x-www-form-urlencoded`` bodies) -- together the
*arguments* -- and ``json`` (every string value of a JSON body) and ``text``
(any other body that is not binary). Each built-in rule names the kinds it
applies to: arguments get the strict rules; JSON strings and text bodies, which
carry prose, markdown and code, only the high-confidence ones.

Rule order
----------
Custom rules run first, in config order, then the built-in sets in the order
given, each set's rules in order. The first ``block`` or ``allow`` verdict is
returned; ``log`` verdicts (custom rules with ``action = "log"``, or a set
enabled as ``"NAME:log"``) are collected in ``Waf.last_logs`` and evaluation
goes on. A set reports at most one rule per request.

Speed
-----
Benign requests must cost little, so the built-in patterns are *gated*. The
values of a zone (path and arguments; body) are joined into one lower-case
string, the hay, with "\\x00" between values. Every pattern has gates,
literals that all its matches contain: a special character (``'``, ``<``,
``(``, ``;``...) when it needs one, found for all patterns at once with one
``bytes.translate`` of the hay, else a rare keyword (``union``, ``..``)
tested with ``in``. Only the patterns whose gates are all present are
searched, as one union per gate group and set; only the sets that match are
then evaluated exactly, rule by rule and value by value, to name the rule and
the target and to honour exclusions. Patterns start with their literal (left
context is read with fixed-width lookbehinds) so that ``re`` skips to it.

A browser repeats its Cookie, Referer and User-Agent on every request (a
page's assets all share the page's Referer): once a request carrying them got
no verdict and no log, their raw values are remembered (bounded) and left out
of the hay of later requests. The per-value evaluation, custom rules and the
pre-filters of the control, scanner and protocol sets still read them.

Before all that, a *glance* (in :meth:`Waf.inspect`) passes most benign
requests without building the hay or a request object: for a request with no
body, no custom rules, a usual method, Cookie, Referer and User-Agent
remembered clean, and no field the protocol or scanner sets look at, it reads
the path, the query and the other scanned fields as bytes: one
``bytes.translate`` each lower-cases a piece and deletes the first-gate special
characters, "%" (decoding), "\\", "*", "&" (other readings) and NUL, so a
piece that got shorter goes to the full inspection; then the first-gate
keywords are looked for with ``in``. None found means no gated set can match
and no pre-filter fires: the full inspection would find nothing. A piece's
result depends on the piece alone, so the pieces found clean (paths and field
values; queries) are remembered too, bounded, and a browser's repeated request
costs a few dictionary lookups. The tests check that the glance never changes
a verdict or a log. It adds no regular expression.

Regex safety
------------
Built-in patterns use bounded repeats only (``{0,n}``, never ``*`` or
``+``), no backreference, and lookbehinds only of fixed width outside any
repeat; the tests check that shape and run each pattern on 64 KiB adversarial
inputs. Patterns from the config go through :func:`check_regex`, which refuses
any pattern whose backtracking work can grow faster than linearly with the
input (see its docstring for what is refused and why).
"""

from __future__ import annotations

import html
import importlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# The regex parser behind `re` (re._parser, re._constants since 3.11): the safety
# check walks what it parses. typeshed has no stubs for these private modules.
_sre: Any = importlib.import_module("re._constants")
_sre_parse: Any = importlib.import_module("re._parser")

__all__ = [
    "DEFAULT_RULE_SETS",
    "RULE_IDS",
    "RULE_SETS",
    "SKIPPED_HEADERS",
    "SKIPPED_HEADER_PREFIXES",
    "Condition",
    "Rule",
    "Verdict",
    "Waf",
    "check_regex",
    "parse_rule",
]


# --------------------------------------------------------------------------
# Public types


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the WAF decided about a request (or, for "log", noted about it)."""

    action: str  # "block" | "log" | "allow"
    rule_id: str
    rule_set: str  # a built-in set's name, or "custom"
    target: str  # "method", "path", "query:NAME", "header:NAME", "cookie:NAME", "body[:NAME]"
    excerpt: str  # at most 80 printable ASCII characters around the match


ACTIONS: Final = ("block", "log", "allow")
OPERATORS: Final = ("equals", "prefix", "contains", "regex", "greater_than", "less_than")
_TARGET_KINDS: Final = ("method", "path", "query", "header", "cookie", "body", "any")
_NAMED_TARGETS: Final = frozenset({"query", "header", "cookie", "body"})
_NUMBER_RE: Final = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?")


def _split_target(target: str) -> tuple[str, str | None]:
    """'query:id' -> ('query', 'id'); 'path' -> ('path', None); ValueError if malformed."""
    kind, sep, name = target.partition(":")
    if kind not in _TARGET_KINDS:
        raise ValueError(f"unknown target {target!r} (expected one of: method, path, query, "
                         "query:NAME, header:NAME, cookie:NAME, body, body:NAME, any)")
    if sep:
        if kind not in _NAMED_TARGETS:
            raise ValueError(f"target {kind!r} takes no name, found {target!r}")
        if not name:
            raise ValueError(f"target {target!r} needs a name after ':'")
        if kind == "header" and not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        return kind, (name.lower() if kind == "header" else name)
    if kind == "header" or kind == "cookie":
        raise ValueError(f"target {kind!r} needs a name: {kind}:NAME")
    return kind, None


_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on the decoded values of one target; true when any value passes.

    ``op`` is one of :data:`OPERATORS`. ``equals``/``prefix``/``contains`` and
    ``regex`` compare text (case-insensitively, ASCII, unless
    ``case_sensitive``); ``greater_than``/``less_than`` compare a number: the
    value read as a decimal number (a value that is not one never passes) or,
    with ``length = True``, its length in bytes. A target the request does not
    have (no such header, cookie or argument) never passes.

    What a target's value is: ``method``; ``path`` percent-decoded; ``query``
    the whole query decoded (``+`` as a space), ``query:NAME`` each value of
    that argument; ``header:NAME`` each field of that name *as received*;
    ``cookie:NAME`` decoded; ``body`` a form decoded as a whole, a JSON body as
    sent, any other body decoded; ``body:NAME`` each value of that form field or
    JSON key; ``any`` the path and every argument and body value.
    """

    target: str
    op: str
    value: str | float
    length: bool = False
    case_sensitive: bool = False
    kind: str = field(init=False, repr=False, compare=False)
    name: str | None = field(init=False, repr=False, compare=False)
    _needle: str = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind, name = _split_target(self.target)
        set_ = object.__setattr__
        set_(self, "kind", kind)
        set_(self, "name", name)
        set_(self, "_needle", "")
        set_(self, "_regex", None)
        if self.op not in OPERATORS:
            raise ValueError(f"unknown operator {self.op!r} (expected one of: "
                             f"{', '.join(OPERATORS)})")
        numeric = self.op in ("greater_than", "less_than")
        if numeric:
            if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
                raise ValueError(f"{self.op} needs a number, found {self.value!r}")
            if self.value != self.value or self.value in (float("inf"), float("-inf")):
                raise ValueError(f"{self.op} needs a finite number, found {self.value!r}")
            return
        if self.length:
            raise ValueError("length = true goes with greater_than or less_than")
        if not isinstance(self.value, str):
            raise ValueError(f"{self.op} needs a string, found {self.value!r}")
        text = _latin1(self.value)
        if self.op == "regex":
            set_(self, "_regex", compile_checked(text, self.case_sensitive))
        else:
            if self.op != "equals" and not text:
                raise ValueError(f"{self.op} needs a non-empty string")
            set_(self, "_needle", text if self.case_sensitive else text.lower())

    def test(self, value: str) -> bool:
        """`value`: decoded, original case (latin-1 str)."""
        op = self.op
        if op == "regex":
            assert self._regex is not None
            return self._regex.search(value) is not None
        if op == "greater_than" or op == "less_than":
            if self.length:
                number: float = len(value)
            elif _NUMBER_RE.fullmatch(value):
                number = float(value)
            else:
                return False
            limit = float(self.value)
            return number > limit if op == "greater_than" else number < limit
        if not self.case_sensitive:
            value = value.lower()
        if op == "contains":
            return self._needle in value
        if op == "prefix":
            return value.startswith(self._needle)
        return value == self._needle


@dataclass(frozen=True, slots=True)
class Rule:
    """A custom rule: all its conditions must hold; then ``action`` applies."""

    id: str
    conditions: tuple[Condition, ...]
    action: str = "block"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _RULE_ID_RE.fullmatch(self.id):
            raise ValueError(f"rule id must be 1 to 64 letters, digits, '-', '_' or '.', "
                             f"found {self.id!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r} (expected block, log or allow)")
        if not self.conditions:
            raise ValueError("a rule needs at least one condition")


_RULE_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _latin1(text: str) -> str:
    """Config text as the WAF compares it: UTF-8 bytes, one character per byte."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


# --------------------------------------------------------------------------
# Regex safety: refuse patterns that can backtrack for long


class _Refused(ValueError):
    pass


_MAX_PATTERN: Final = 1024  # characters of a config pattern
_MAX_POSITIONS: Final = 512  # character positions after expanding counted repeats
# Counted repeats {m,n} are expanded exactly when n <= 64 and n - m <= 8; others are
# analysed as {m,} (wide ranges would make the set of states to explore exponential).
_EXPAND: Final = 64
_RANGE: Final = 8
_MAX_LIVE: Final = 100  # partial matches alive at once, over all start positions
_MAX_STATES: Final = 4000  # distinct sets of partial matches the check may visit
_COUNT_CAP: Final = 1 << 30

_ALL_BYTES: Final = (1 << 256) - 1
_NEWLINE: Final = 1 << 10


def _byte_range(lo: int, hi: int) -> int:
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


_DIGIT: Final = _byte_range(0x30, 0x39)
_SPACE: Final = _byte_range(0x09, 0x0D) | (1 << 0x20)
_UPPER: Final = _byte_range(0x41, 0x5A)
_LOWER: Final = _byte_range(0x61, 0x7A)
_WORD: Final = _DIGIT | _UPPER | _LOWER | (1 << 0x5F)
_CATEGORIES: Final = {
    _sre.CATEGORY_DIGIT: _DIGIT,
    _sre.CATEGORY_NOT_DIGIT: _ALL_BYTES ^ _DIGIT,
    _sre.CATEGORY_SPACE: _SPACE,
    _sre.CATEGORY_NOT_SPACE: _ALL_BYTES ^ _SPACE,
    _sre.CATEGORY_WORD: _WORD,
    _sre.CATEGORY_NOT_WORD: _ALL_BYTES ^ _WORD,
}


def _fold(mask: int) -> int:
    """The mask with ASCII letters in both cases (re.IGNORECASE with re.ASCII)."""
    return mask | ((mask & _UPPER) << 32) | ((mask & _LOWER) >> 32)


def _class_mask(op: Any, av: Any, icase: bool) -> int:
    if op is _sre.LITERAL:
        mask = 1 << av if av < 256 else 0
    elif op is _sre.NOT_LITERAL:
        mask = _ALL_BYTES ^ (1 << av if av < 256 else 0)
    elif op is _sre.ANY:
        mask = _ALL_BYTES  # also "\n": counting it as possible only over-estimates
    else:  # IN
        mask = 0
        negate = False
        for iop, iav in av:
            if iop is _sre.NEGATE:
                negate = True
            elif iop is _sre.LITERAL:
                mask |= 1 << iav if iav < 256 else 0
            elif iop is _sre.RANGE:
                lo, hi = iav
                if lo < 256:
                    mask |= _byte_range(lo, min(hi, 255))
            elif iop is _sre.CATEGORY:
                mask |= _CATEGORIES.get(iav, _ALL_BYTES)
            else:
                mask = _ALL_BYTES
        if negate:
            mask = _ALL_BYTES ^ mask
    return _fold(mask) if icase else mask


class _Frag:
    """Glushkov facts of a sub-expression, with path multiplicities.

    nul: in how many ways it matches the empty string; first/last: position ->
    number of ways a match can start/end there; clean: nullable without passing
    an assertion; clean_last: last positions after which only plain (assertion
    free) nullable parts follow.
    """

    __slots__ = ("nul", "first", "last", "clean", "clean_last")

    def __init__(self, nul: int, first: dict[int, int], last: dict[int, int], clean: bool,
                 clean_last: dict[int, int]) -> None:
        self.nul = nul
        self.first = first
        self.last = last
        self.clean = clean
        self.clean_last = clean_last


def _plus(a: dict[int, int], b: dict[int, int], times: int = 1) -> dict[int, int]:
    if not times or not b:
        return a
    out = dict(a)
    for k, v in b.items():
        out[k] = min(_COUNT_CAP, out.get(k, 0) + v * times)
    return out


class _Positions:
    """Builds the position automaton of a parsed pattern, one position per character test."""

    def __init__(self) -> None:
        self.masks: list[int] = [0]  # index 0: the start state, which tests nothing
        self.follow: dict[int, dict[int, int]] = {}

    def position(self, mask: int) -> _Frag:
        if len(self.masks) > _MAX_POSITIONS:
            raise _Refused(f"too large to verify (more than {_MAX_POSITIONS} character "
                           "positions once counted repeats are expanded)")
        p = len(self.masks)
        self.masks.append(mask)
        return _Frag(0, {p: 1}, {p: 1}, False, {p: 1})

    def link(self, last: dict[int, int], first: dict[int, int]) -> None:
        for p, c in last.items():
            out = self.follow.setdefault(p, {})
            for q, m in first.items():
                out[q] = min(_COUNT_CAP, out.get(q, 0) + c * m)

    def cat(self, a: _Frag, b: _Frag) -> _Frag:
        self.link(a.last, b.first)
        return _Frag(min(_COUNT_CAP, a.nul * b.nul), _plus(a.first, b.first, a.nul),
                     _plus(b.last, a.last, b.nul), a.clean and b.clean,
                     _plus(b.clean_last, a.clean_last) if b.clean else b.clean_last)

    @staticmethod
    def alt(a: _Frag, b: _Frag) -> _Frag:
        return _Frag(min(_COUNT_CAP, a.nul + b.nul), _plus(a.first, b.first),
                     _plus(a.last, b.last), a.clean or b.clean,
                     _plus(a.clean_last, b.clean_last))

    def loop(self, a: _Frag, optional: bool) -> _Frag:
        self.link(a.last, a.first)
        return _Frag(a.nul + 1 if optional else a.nul, a.first, a.last, optional or a.clean,
                     a.clean_last)

    def seq(self, items: Iterable[tuple[Any, Any]], flags: int, depth: int) -> _Frag:
        frag = _Frag(1, {}, {}, True, {})
        for op, av in items:
            frag = self.cat(frag, self.node(op, av, flags, depth))
        return frag

    def node(self, op: Any, av: Any, flags: int, depth: int) -> _Frag:
        if op in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
            return self.position(_class_mask(op, av, bool(flags & re.IGNORECASE)))
        if op is _sre.AT:
            return _Frag(1, {}, {}, False, {})
        if op is _sre.SUBPATTERN:
            _group, add, remove, sub = av
            return self.seq(sub, (flags | add) & ~remove, depth)
        if op is _sre.ATOMIC_GROUP:
            return self.seq(av, flags, depth)
        if op is _sre.BRANCH:
            frag: _Frag | None = None
            for sub in av[1]:
                one = self.seq(sub, flags, depth)
                frag = one if frag is None else self.alt(frag, one)
            assert frag is not None
            return frag
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            return self.repeat(av, flags, depth)
        if op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
            raise _Refused("backreferences and conditional groups ((?P=name), \\1, "
                           "(?(1)...)) are not allowed: matching them can take exponential time")
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            raise _Refused("lookahead and lookbehind ((?=...), (?!...), (?<=...), (?<!...)) "
                           "are not allowed: each runs a second match at every position")
        raise _Refused(f"unsupported construct {op}")

    def repeat(self, av: Any, flags: int, depth: int) -> _Frag:
        lo, hi, sub = av
        if hi == 0:
            return _Frag(1, {}, {}, True, {})
        first = self.seq(sub, flags, depth + 1)
        if hi > 1 and first.nul:
            raise _Refused("a repeated part that can match the empty string (like (a*)*, "
                           "(a?)+ or (|a){2,}) is not allowed: it can be repeated in "
                           "exponentially many ways")
        if hi is _sre.MAXREPEAT or hi > _EXPAND or hi - lo > _RANGE:
            # E{m,} as E^(m-1) E+ (E* when m is 0); large counts are cut to _EXPAND,
            # which only adds ways to match.
            need = min(lo, _EXPAND)
            if need == 0:
                return self.loop(first, optional=True)
            copies = [first] + [self.seq(sub, flags, depth + 1) for _ in range(need - 1)]
            frag = _Frag(1, {}, {}, True, {})
            for one in copies[:-1]:
                frag = self.cat(frag, one)
            return self.cat(frag, self.loop(copies[-1], optional=False))
        # E{m,n}: m copies, then n-m optional ones nested as E(E(E)?)?, the way the
        # matcher counts: one more copy is only tried after the one before.
        copies = [first] + [self.seq(sub, flags, depth + 1) for _ in range(hi - 1)]
        frag = _Frag(1, {}, {}, True, {})
        for one in copies[:lo]:
            frag = self.cat(frag, one)
        tail = _Frag(1, {}, {}, True, {})
        for one in reversed(copies[lo:]):
            tail = self.cat(one, tail)
            tail = _Frag(tail.nul + 1, tail.first, tail.last, True, tail.clean_last)
        return self.cat(frag, tail)


def _leading_repeat(items: Sequence[tuple[Any, Any]]) -> bool:
    for op, av in items:
        if op is _sre.AT:
            continue
        if op is _sre.SUBPATTERN:
            return _leading_repeat(av[3])
        return op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT) and (
            av[1] is _sre.MAXREPEAT or av[1] > _EXPAND)
    return False


def _live_paths(auto: _Positions, start: dict[int, int], done: set[int]) -> int:
    """The most partial matches alive at once, over every input; -1 if too many states.

    A backtracking search (Python's ``re``) explores, for each input position,
    every partial match that has read the input up to there, whichever
    position it started from; the total work is the sum of those counts. The
    count is computed on the position automaton (with the `.*?` the search
    amounts to when unanchored), exploring every reachable vector of counts
    per position, one step per class of equivalent bytes.
    """
    masks = auto.masks
    signatures: dict[int, int] = {}
    for byte in range(256):
        sig = 0
        bit = 1 << byte
        for p in range(1, len(masks)):
            if masks[p] & bit:
                sig |= 1 << p
        signatures[sig] = byte
    classes = [sig for sig in signatures if sig]
    edges: dict[int, dict[int, int]] = {p: ({} if p in done else out)
                                        for p, out in auto.follow.items()}
    edges[0] = start
    seen: set[tuple[tuple[int, int], ...]] = set()
    todo: list[tuple[tuple[int, int], ...]] = [((0, 1),)]
    worst = 1
    while todo:
        state = todo.pop()
        for sig in classes:
            acc: dict[int, int] = {}
            for p, c in state:
                for q, m in edges.get(p, {}).items():
                    if sig >> q & 1:
                        acc[q] = acc.get(q, 0) + c * m
            if not acc:
                continue
            total = sum(acc.values())
            if total > worst:
                worst = total
                if worst > _MAX_LIVE:
                    return worst
            key = tuple(sorted(acc.items()))
            if key not in seen:
                if len(seen) >= _MAX_STATES:
                    return -1
                seen.add(key)
                todo.append(key)
    return worst


def check_regex(pattern: str, flags: int = 0) -> None:
    """Raise ValueError (with the reason) unless `pattern` is safe to search with.

    "Safe" means Python's backtracking ``re.search`` does work at most linear
    in the input: at most :data:`_MAX_LIVE` partial matches are ever alive at
    once, whatever the input. Refused, with the reason in the message:

    * backreferences and conditional groups (``\\1``, ``(?P=n)``, ``(?(1)a|b)``):
      matching them is NP-hard in general;
    * lookahead and lookbehind: each one is a second match at every position,
      out of reach of the analysis below;
    * repeating something that can match the empty string (``(a*)*``,
      ``(a?)+``, ``(.*)*``);
    * any pattern for which, on some input, more than 100 partial matches are
      alive at once. This is decided exactly on the position (Glushkov)
      automaton of ``.*?PATTERN`` (plain ``PATTERN`` when it starts with ``^`` or
      ``\\A`` without re.MULTILINE: one attempt only), with path
      multiplicities kept, by exploring every reachable vector of
      "partial matches per position". It refuses exactly the shapes known to
      explode: nested quantifiers over overlapping text (``(a+)+``,
      ``(\\w+\\s?)*``), alternatives that overlap inside a repeat (``(a|a)*``,
      ``(a|ab)+``), adjacent repeats over the same characters (``\\d+\\d+``,
      ``.*a.*b``), and an unanchored pattern that starts with an unbounded
      repeat (``\\w+@``: every start position re-reads the same run: drop
      the leading repeat, or anchor it), while accepting e.g. ``x\\d+y``,
      ``^/api/.*/delete$``, ``[a-f0-9]{32}``, ``(\\d{1,3}\\.){3}\\d{1,3}``,
      ``^([a-z0-9-]+\\.)+example\\.com$``;
    * patterns too large to verify: over 1024 characters, or over 512
      character positions once counted repeats are expanded. A counted repeat
      {m,n} is expanded exactly when n <= 64 and n - m <= 8 (``[a-f0-9]{32}``,
      ``\\d{1,3}``); a wider one is analysed as unbounded, so ``a.{0,60}b``
      is refused like ``a.*b`` although it is in fact linear: anchor it, or
      narrow the range.

    The analysis over-approximates (assertions such as ``\\b`` and ``$`` are
    assumed to pass; lazy, possessive and atomic forms count as greedy ones),
    so it may refuse a pattern that is in fact fast, never the reverse.
    """
    if len(pattern) > _MAX_PATTERN:
        raise ValueError(f"pattern is too long ({len(pattern)} characters, at most "
                         f"{_MAX_PATTERN})")
    try:
        parsed = _sre_parse.parse(pattern, flags | re.ASCII)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    flags = parsed.state.flags
    items = list(parsed.data)
    try:
        auto = _Positions()
        frag = auto.seq(items, flags, 0)
        shape = _Positions()
        alone = shape.seq(items, flags, 0)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    # The shape on its own, as if something after it could fail: ambiguity there
    # ((a+)+, (a|a)*, .*.*) is refused even where a search would stop early.
    if _live_paths(shape, alone.first, set()) > _MAX_LIVE:
        raise ValueError("refused: ambiguous repetition, backtracking can grow exponentially "
                         "or polynomially with the input: nested quantifiers over the same "
                         "text (like (a+)+ or (\\w+\\s?)*), alternatives that overlap "
                         "inside a repeat (like (a|ab)*) or adjacent repeats over the same "
                         "characters (like \\d+\\d+); make them unambiguous or bound them")
    anchored = bool(items) and items[0][0] is _sre.AT and (
        items[0][1] is _sre.AT_BEGINNING_STRING
        or (items[0][1] is _sre.AT_BEGINNING and not flags & re.MULTILINE))
    if not anchored:
        any_byte = auto.position(_ALL_BYTES)
        frag = auto.cat(auto.loop(any_byte, optional=True), frag)
    if frag.clean:
        return  # matches the empty string at the first position tried
    worst = _live_paths(auto, frag.first, set(frag.clean_last))
    if worst == -1:
        raise ValueError("too complex to verify as safe; simplify it or anchor it with ^")
    if worst > _MAX_LIVE:
        if not anchored and _leading_repeat(items):
            why = ("it starts with an unbounded repeat, which a search re-reads from every "
                   "start position: drop the leading repeat (a search for x+y finds the "
                   "same requests as one for xy) or anchor the pattern with ^")
        else:
            why = ("a repeat can be re-read from many start positions or split in many "
                   "ways (like a.*b or .*x.*y without ^): bound it ({0,N}), separate "
                   "repeats with a character they cannot match, or anchor the pattern with ^")
        raise ValueError(f"refused: backtracking can grow faster than the input; {why}")


def compile_checked(pattern: str, case_sensitive: bool = False) -> re.Pattern[str]:
    """check_regex, then compile (ASCII classes, IGNORECASE unless case_sensitive)."""
    flags = re.ASCII | (0 if case_sensitive else re.IGNORECASE)
    check_regex(pattern, flags)
    return re.compile(pattern, flags)


# --------------------------------------------------------------------------
# Decoding: once per value, into one character per byte (latin-1)

_HEX_PAIRS: Final = {
    f"{hi}{lo}": chr(int(f"{hi}{lo}", 16))
    for hi in "0123456789abcdefABCDEF" for lo in "0123456789abcdefABCDEF"
}
_PCT_U_RE: Final = re.compile(r"%[uU]([0-9a-fA-F]{4})")
_OVERLONG_RE: Final = re.compile("\xc0[\xae\xaf]|\xc1[\x9c\x81]|\xe0\x80[\xae\xaf]")
_OVERLONG: Final = {"\xc0\xae": ".", "\xc0\xaf": "/", "\xc1\x9c": "\\", "\xc1\x81": "A",
                    "\xe0\x80\xae": ".", "\xe0\x80\xaf": "/"}


def _unquote(text: str) -> str:
    parts = text.split("%")
    if len(parts) == 1:
        return text
    out = [parts[0]]
    pairs = _HEX_PAIRS
    for part in parts[1:]:
        char = pairs.get(part[:2])
        if char is None:
            out.append("%")
            out.append(part)
        else:
            out.append(char)
            out.append(part[2:])
    return "".join(out)


def _pct_u(match: re.Match[str]) -> str:
    return _latin1(chr(int(match[1], 16)))


def _decode(text: str) -> str:
    """Percent-decoding, twice if escapes remain; %uXXXX; overlong '.', '/', '\\'."""
    if "%u" in text or "%U" in text:
        text = _PCT_U_RE.sub(_pct_u, text)
    text = _unquote(text)
    if "%" in text:
        text = _unquote(text)
    if "\xc0" in text or "\xc1" in text or "\xe0\x80" in text:
        text = _OVERLONG_RE.sub(lambda m: _OVERLONG[m[0]], text)
    return text


# Kinds of values (bit flags); a rule names the kinds it applies to.
PATH: Final = 1
QUERY: Final = 2
COOKIE: Final = 4
HEADER: Final = 8
FORM: Final = 16
JSON: Final = 32
TEXT: Final = 64
_NAME: Final = 128  # with QUERY, COOKIE or FORM: the item is a name, not a value
ARGS: Final = QUERY | COOKIE | HEADER | FORM
BODY: Final = JSON | TEXT
EVERY: Final = PATH | ARGS | BODY
_KIND_TARGET: Final = {PATH: "path", QUERY: "query", COOKIE: "cookie", HEADER: "header",
                       FORM: "body", JSON: "body", TEXT: "body"}
_KIND_MASK: Final = 127

# Header fields the attack sets do not scan: structured fields whose values are
# tokens, lists and dates that a backend does not reflect (and that would
# otherwise look like code: "*/*;q=0.8", '"Chromium";v="120"'), credentials,
# the Cookie field (scanned cookie by cookie) and the framing fields that the
# protocol set checks.
SKIPPED_HEADERS: Final = frozenset({
    "accept", "accept-charset", "accept-encoding", "accept-language", "accept-datetime",
    "accept-ranges", "authorization", "proxy-authorization", "cache-control", "connection",
    "content-length", "content-encoding", "date", "dnt", "expect", "host", "keep-alive",
    "max-forwards", "pragma", "priority", "range", "te", "trailer", "transfer-encoding",
    "upgrade", "upgrade-insecure-requests", "x-forwarded-proto", "x-forwarded-port", "cookie",
    "purpose", "save-data", "viewport-width", "width", "device-memory", "downlink", "ect", "rtt",
})
SKIPPED_HEADER_PREFIXES: Final = ("sec-", "accept-", "if-", "access-control-request-")

_BINARY_TYPES: Final = ("image/", "audio/", "video/", "font/", "application/octet-stream",
                        "application/pdf", "application/zip", "application/gzip",
                        "application/x-protobuf", "application/protobuf", "application/grpc",
                        "application/wasm", "application/x-tar", "application/vnd.")

# Header roles in the one loop over the fields (keys: lower-case names as bytes).
# _R_PLAIN: a value the sets scan; _R_SCANNER: the same, from a scanner's field.
# Cookie, User-Agent and Referer (the values remembered clean) come right after.
(_R_SKIP, _R_PLAIN, _R_COOKIE, _R_UA, _R_REFERER, _R_HOST, _R_TYPE, _R_SCANNER, _R_LENGTH,
 _R_TE, _R_RANGE, _R_OVERRIDE) = range(12)
_ROLES: Final = {name.encode(): _R_SKIP for name in SKIPPED_HEADERS}
_ROLES.update({b"cookie": _R_COOKIE, b"host": _R_HOST, b"content-length": _R_LENGTH,
               b"transfer-encoding": _R_TE, b"content-type": _R_TYPE, b"range": _R_RANGE,
               b"x-http-method-override": _R_OVERRIDE, b"x-http-method": _R_OVERRIDE,
               b"x-method-override": _R_OVERRIDE, b"user-agent": _R_UA, b"referer": _R_REFERER})
_ROLES.update({b"-".join(part.capitalize() for part in name.split(b"-")): role
               for name, role in list(_ROLES.items())})
_ROLES.update({b"DNT": _R_SKIP, b"TE": _R_SKIP, b"ECT": _R_SKIP, b"RTT": _R_SKIP})
_SKIPPED_PREFIXES_B: Final = tuple(p.encode() for p in SKIPPED_HEADER_PREFIXES)
_SCANNER_HEADERS: Final = frozenset({b"x-scanner", b"x-wipp", b"x-scan-memo", b"x-request-memo",
                                     b"x-requestmanager-memo", b"acunetix-product",
                                     b"acunetix-scanning-agreement", b"acunetix-user-agreement",
                                     b"x-arachni-scan-seed", b"x-nessus"})
# Every field name seen, as received, with its role: one lookup per field for the
# names a client repeats (Chrome's many sec-* fields). Bounded: names are the
# client's choice.
_FIELD_ROLES: dict[bytes, int] = dict(_ROLES)
_FIELD_ROLES_MAX: Final = len(_ROLES) + 1024


def _field_role(name: bytes) -> int:
    """The role of a field name that is not in _ROLES as received (and remember it)."""
    lname = name.lower()
    role = _ROLES.get(lname)
    if role is None:
        if lname.startswith(_SKIPPED_PREFIXES_B):
            role = _R_SKIP
        elif lname in _SCANNER_HEADERS or lname.startswith(b"acunetix"):
            role = _R_SCANNER
        else:
            role = _R_PLAIN
    if len(_FIELD_ROLES) >= _FIELD_ROLES_MAX:
        _FIELD_ROLES.clear()
        _FIELD_ROLES.update(_ROLES)
    _FIELD_ROLES[name] = role
    return role

_Items = list[tuple[int, str, str]]


class _Request:
    """One request, decoded once.

    The hays (what the gates look at) are always made; the per-value items
    (kind, name, decoded value in its own case) only when a rule needs them:
    custom rules, or a built-in set to evaluate exactly.
    """

    __slots__ = (
        "method", "path", "query", "raw_headers", "body_text", "args", "texts",
        "p_hay", "a_hay", "t_hay", "decoded", "nul", "query_text", "fresh",
        "hosts", "lengths", "te", "range", "override", "ua", "scanner_header",
    )

    method: str
    path: str  # decoded, original case
    query: str  # raw query string
    raw_headers: Sequence[tuple[bytes, bytes]]
    body_text: str  # the whole body as the "body" custom target sees it (full parse only)
    args: _Items | None  # query, cookies, scanned headers, form fields (names flagged _NAME)
    texts: _Items | None  # JSON strings and text bodies
    # Hays: the values of a zone lower-cased, NULs removed, joined by "\x00" (which
    # no value then holds, so "\n" in a hay is a newline inside a value).
    p_hay: str  # the path, "\\" read as "/"
    a_hay: str  # arguments
    t_hay: str  # bodies
    decoded: bool  # some path or argument value was decoded, or there is a body
    nul: bool  # some value held a NUL
    query_text: str | None  # the whole query decoded (for custom rules), made on demand
    fresh: list[bytes]  # Cookie, Referer and User-Agent values not known clean (in a_hay)
    hosts: list[str]
    lengths: list[str]
    te: bool
    range: str | None
    override: tuple[str, str] | None  # (field name, value)
    ua: str | None
    scanner_header: str | None


def _split_pairs(text: str, kind: int, sep: str, out: _Items | None, values: list[str],
                 label: str | None = None) -> bool:
    """name=value pairs of a query or form body; returns whether anything was decoded."""
    decoded = False
    for part in text.split(sep):
        if not part:
            continue
        if "+" in part:
            part = part.replace("+", " ")
        name, _, value = part.partition("=")
        if "%" in part:
            decoded = True
            name = _decode(name)
            value = _decode(value)
        values.append(name)
        values.append(value)
        if out is not None:
            out.append((kind | _NAME, label or name, name))
            out.append((kind, label or name, value))
    return decoded


def _split_cookies(header: str, out: _Items | None, values: list[str]) -> bool:
    decoded = False
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        if "%" in value or "+" in value:
            value = value.replace("+", " ")
            if "%" in value:
                decoded = True
                value = _decode(value)
        if "%" in name:
            name = _decode(name)
        values.append(name)
        values.append(value)
        if out is not None:
            out.append((COOKIE | _NAME, name, name))
            out.append((COOKIE, name, value))
    return decoded


def _json_strings(doc: Any, out: _Items | None, values: list[str]) -> None:
    """The string values of a JSON document (with their keys, into `out`, if given)."""
    if out is None:
        stack = [doc]
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is str:
                values.append(item)
            elif kind is dict:
                stack.extend(item.values())
            elif kind is list:
                stack.extend(item)
        return
    keyed: list[tuple[str, Any]] = [("", doc)]
    while keyed:
        key, item = keyed.pop()
        if isinstance(item, str):
            if not item.isascii():
                item = item.encode("utf-8", "surrogatepass").decode("latin-1")
            out.append((JSON, key, item))
            values.append(item)
        elif isinstance(item, dict):
            keyed.extend(item.items())
        elif isinstance(item, list):
            keyed.extend((key, v) for v in item)


_JSON_ESCAPE_RE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")


def _parse_body(body: bytes, ctype: str, req: _Request, texts: _Items | None,
                tvalues: list[str], args: _Items | None, avalues: list[str]) -> str:
    """Body values into the lists; returns a form body's hay when made in one pass."""
    text = body.decode("latin-1")
    mtype = ctype.partition(";")[0].strip().lower()
    if mtype == "application/x-www-form-urlencoded":
        if args is None:
            return _pairs_hay(text, req)
        plain = text.replace("+", " ")  # the "body" custom target: decoded as a whole
        req.body_text = _decode(plain) if "%" in plain else plain
        _split_pairs(text, FORM, "&", args, avalues)
        return ""
    if mtype.startswith(_BINARY_TYPES):
        req.body_text = text
        return ""
    if mtype == "application/json" or mtype.endswith("+json") or (
            not mtype and text.lstrip()[:1] in ("{", "[")):
        req.body_text = text
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            pass  # cut at body_limit, or not JSON after all: read it as text
        else:
            _json_strings(doc, texts, tvalues)
            return ""
        if "\\u" in text:
            text = _JSON_ESCAPE_RE.sub(lambda m: _latin1(chr(int(m[1], 16))), text)
    elif "%" in text:
        text = _decode(text)
    req.body_text = text
    tvalues.append(text)
    if texts is not None:
        texts.append((TEXT, "", text))
    return ""


def _join(values: list[str], req: _Request) -> str:
    hay = "\x00".join(values).lower()
    if not hay.isascii() and max(hay) > "\xff":  # JSON text: one byte per character
        hay = hay.encode("utf-8", "surrogatepass").decode("latin-1")
    if req.decoded:  # only decoding (and bodies) can bring a NUL in
        for value in values:
            if "\x00" in value:
                req.nul = True
                return "\x00".join([v.replace("\x00", "") for v in values]).lower()
    return hay


def _pairs_hay(text: str, req: _Request) -> str:
    """name=value&... as hay, decoded in one pass: separators first become "\x00"
    (an escape never spans one). A decoded NUL shows as one "\x00" too many."""
    if "+" in text:
        text = text.replace("+", " ")
    text = text.replace("&", "\x00").replace("=", "\x00")
    if "%" in text:
        decoded = _decode(text)
        if decoded.count("\x00") != text.count("\x00"):  # rare: part by part, NULs out
            req.nul = True
            return "\x00".join([_decode(part).replace("\x00", "")
                                for part in text.split("\x00")])
        return decoded
    return text


def _parse(method: bytes, path: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]],
           body: bytes, full: bool, clean: Mapping[bytes, int]) -> _Request:
    """Decode a request; `full`: also make the per-value items.

    `clean`: Cookie, Referer and User-Agent values known to pass; they are left
    out of the hays (and, unless `full`, not decoded at all).
    """
    req = _Request()
    req.method = method.decode("latin-1")
    req.query = query.decode("latin-1")
    req.raw_headers = headers
    req.query_text = None
    args: _Items | None = [] if full else None
    avalues: list[str] = []
    decoded = False
    text = path.decode("latin-1")
    if "%" in text:
        text = _decode(text)
        decoded = True
    req.path = text
    hay = text.lower()
    if "\\" in hay:
        hay = hay.replace("\\", "/")
    req.nul = "\x00" in hay
    req.p_hay = hay.replace("\x00", "") if req.nul else hay
    quick = ""  # hay made without splitting pairs (fast path), joined in first
    if query:
        if args is None:
            quick = _pairs_hay(req.query, req)
            decoded |= "%" in req.query
        else:
            decoded |= _split_pairs(req.query, QUERY, "&", args, avalues)
    hosts: list[str] = []
    lengths: list[str] = []
    req.hosts = hosts
    req.lengths = lengths
    req.te = False
    req.range = req.override = req.ua = req.scanner_header = None
    fresh: list[bytes] = []
    req.fresh = fresh
    unseen: list[str] = []  # the values list for what the hay leaves out
    ctype = ""
    roles = _FIELD_ROLES
    for raw_name, raw_value in headers:
        role = roles.get(raw_name)
        if role is None:
            role = _field_role(raw_name)
        if role == _R_SKIP:
            continue
        if role == _R_PLAIN:
            pass
        elif role == _R_SCANNER:
            req.scanner_header = raw_name.lower().decode("latin-1")
        elif role <= _R_REFERER:  # Cookie, User-Agent, Referer
            # Long, and the same from request to request: once a request carrying
            # one of these passed, the value stays out of the hay.
            seen = raw_value in clean
            if role == _R_UA:
                req.ua = raw_value.decode("latin-1")
            if seen and args is None:
                continue
            values = unseen if seen else avalues
            if not seen:
                fresh.append(raw_value)
            value = raw_value.decode("latin-1")
            if role == _R_COOKIE:
                if args is None and '"' not in value:
                    # split and stripped as _split_cookies does (and as servers do)
                    quick += "\x00" + _pairs_hay(
                        "&".join([part.strip() for part in value.split(";")]), req)
                    decoded |= "%" in value
                else:
                    decoded |= _split_cookies(value, args, values)
            elif role == _R_REFERER:
                url, _, params = value.partition("?")
                if "%" in url:
                    url = _decode(url)
                    decoded = True
                values.append(url)
                if args is not None:
                    args.append((HEADER, "referer", url))
                if params:
                    if args is None:
                        quick += "\x00" + _pairs_hay(params, req)
                        decoded |= "%" in params
                    else:
                        decoded |= _split_pairs(params, HEADER, "&", args, values, "referer")
            else:
                if "%" in value:
                    value = _decode(value)
                    decoded = True
                values.append(value)
                if args is not None:
                    args.append((HEADER, "user-agent", value))
            continue
        elif role == _R_HOST:
            hosts.append(raw_value.decode("latin-1"))
            continue
        elif role == _R_LENGTH:
            lengths.append(raw_value.decode("latin-1"))
            continue
        elif role == _R_TE:
            req.te = True
            continue
        elif role == _R_RANGE:
            req.range = raw_value.decode("latin-1")
            continue
        elif role == _R_OVERRIDE:
            req.override = raw_name.lower().decode("latin-1"), raw_value.decode("latin-1")
        elif role == _R_TYPE:
            ctype = raw_value.decode("latin-1")
        value = raw_value.decode("latin-1")
        if "%" in value:
            value = _decode(value)
            decoded = True
        avalues.append(value)
        if args is not None:
            args.append((HEADER, raw_name.lower().decode("latin-1"), value))
    texts: _Items | None = [] if full else None
    tvalues: list[str] = []
    req.body_text = ""
    if body:
        decoded = True
        quick += "\x00" + _parse_body(body, ctype, req, texts, tvalues, args, avalues)
    req.args = args
    req.texts = texts
    req.decoded = decoded
    req.a_hay = _join(avalues, req)
    if quick:
        req.a_hay = quick.lower() + "\x00" + req.a_hay
    req.t_hay = _join(tvalues, req) if tvalues else ""
    return req


# --------------------------------------------------------------------------
# Built-in rule sets
#
# Patterns are matched against lower-cased text; they use bounded repeats only
# (checked by the tests) and are compiled with re.MULTILINE | re.ASCII. In a
# hay, values are separated by "\x00", so a pattern anchors a value's start
# as (?:^|\x00) and its end as (?:$|\x00).
#
# Every pattern has *gates*: literals that each of its matches contains (the
# tests check that they are literal runs of the pattern). The engine only
# searches a zone for the patterns whose gates are all present in it.

_FLAGS: Final = re.MULTILINE | re.ASCII


@dataclass(frozen=True, slots=True)
class _Pattern:
    source: str
    kinds: int
    gates: tuple[str, ...]
    regex: re.Pattern[str] = field(compare=False)


def _literal_runs(source: str) -> list[str]:
    """The runs of consecutive literal characters at the top level of a pattern."""
    runs: list[str] = []
    run: list[str] = []
    for op, av in _sre_parse.parse(source, _FLAGS).data:
        if op is _sre.LITERAL:
            run.append(chr(av))
            continue
        if run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    return runs


# Characters cheap to look for: a hay is reduced to the ones it holds in one
# bytes.translate. A pattern's first gate is one of them whenever it needs one.
SPECIALS: Final = "'\"`;|&<>{}$()=#@%*:\\\n\r"
_NOT_SPECIAL: Final = bytes(b for b in range(256) if chr(b) not in SPECIALS)


def _p(source: str, kinds: int, *gates: str) -> _Pattern:
    if not gates:
        runs = _literal_runs(source)
        assert runs, f"pattern without a literal to gate on: {source}"
        gates = (max(runs, key=len),)
    if gates[0] not in SPECIALS or len(gates[0]) != 1:
        for char in "".join(gates):
            if char in SPECIALS:
                gates = (char, *gates)
                break
    return _Pattern(source, kinds, gates, re.compile(source, _FLAGS))


def _each(leads: str, tail: str, kinds: int, *gates: str) -> list[_Pattern]:
    """One pattern per leading character (each gated on it): "['\\"]x" as "'x", '"x'."""
    return [_p(re.escape(lead) + tail, kinds, lead, *gates) for lead in leads]


def _call(names: Sequence[str], tail: str = "") -> str:
    """NAME( or NAME (, found by its "(" (a literal the search skips to) and read behind.

    A pattern starting with a name (or with \\b) has no literal prefix, so the search
    tries it at every position; starting with "(" it only stops at parentheses.
    """
    behind = "|".join(f"(?<=\\b{re.escape(name)}{gap}\\()" for name in names for gap in ("", " "))
    return rf"\((?:{behind}){tail}"


_Check = Callable[[_Request], "tuple[str, str] | None"]  # -> (target, excerpt)


@dataclass(frozen=True, slots=True)
class _Builtin:
    id: str
    patterns: tuple[_Pattern, ...] = ()
    check: _Check | None = None  # a rule that is code, not patterns
    headers: frozenset[str] | None = None  # header kind: only these fields


def _rule(rule_id: str, *patterns: _Pattern | list[_Pattern],
          headers: Iterable[str] | None = None) -> _Builtin:
    flat: list[_Pattern] = []
    for one in patterns:
        flat.extend(one if isinstance(one, list) else [one])
    return _Builtin(rule_id, tuple(flat), None,
                    frozenset(headers) if headers is not None else None)


# ---- path traversal

_TRAVERSAL: Final = (
    _rule("traversal-dotdot", _p(r"/\.\.(?:[/;]|$|\x00)", PATH, "..")),
    _rule("traversal-args",
          _p(r"\.\.(?:(?<=^\.\.)|(?<=[\x00/\\]\.\.))(?:[/\\]|$|\x00)", ARGS, "..")),
    _rule("traversal-file",
          _p(r"etc(?:(?<=^etc)|(?<=[\x00/\\]etc))[/\\](?:passwd|shadow|group|sudoers"
             r"|master\.passwd)\b", PATH | ARGS, "etc"),
          _p(r"proc(?:(?<=^proc)|(?<=[\x00/\\]proc))[/\\](?:self|\d{1,7})[/\\]", PATH | ARGS,
             "proc"),
          _p(r"\b(?:boot|win|system)\.ini\b", PATH | ARGS, ".ini"),
          _p(r"windows[/\\]system32[/\\]", PATH | ARGS, "system32"),
          _p(r"\.ssh[/\\](?:id_\w{2,12}|authorized_keys|known_hosts)", PATH | ARGS),
          _p(r"web-inf[/\\]web\.xml", PATH | ARGS, "web-inf"),
          _p(r"\.\.[/\\](?:\.\.[/\\]){0,15}(?:etc[/\\](?:passwd|shadow)|windows[/\\]win\.ini"
             r"|boot\.ini|proc[/\\]self[/\\])", BODY, ".."),
          _p(r"file:/{1,3}(?:etc/(?:passwd|shadow)|[a-z]:[/\\]windows[/\\]|proc/self/)",
             EVERY, "file:")),
    _rule("traversal-dotfile",
          _p(r"/\.(?:env(?:[./;~]|$|\x00)|git/|svn/|hg/|bzr/|htaccess|htpasswd|aws/|ssh/"
             r"|bash_history|ds_store|npmrc|dockercfg|docker/|kube/)", PATH)),
)

# ---- SQL injection

# A comparison; "==" is code, not SQL.
_SQL_CMP: Final = r"(?:=(?!=)|<>|!=|<|>|\blike\b|\bregexp\b|\brlike\b|\bbetween\b)"
# Numeric tautologies, one pattern per comparison so that each is gated on its operator;
# "and" only with = ("5 < 10 and 10 > 5" is arithmetic, "1 and 1=1" a probe).
_SQL_OPERATORS: Final = ((r"[!<>]?=(?!=)", "="), (r"<>?", "<"), (r">", ">"))
_SQL_TAUTOLOGY_WORDS: Final = (("or", "=<>"), ("xor", "=<>"), ("having", "=<>"),
                               ("where", "=<>"), ("and", "="))
_SQL_CATALOGS: Final = (r"(?:information_schema|sysobjects|syscolumns|sqlite_master|pg_catalog"
                        r"|pg_shadow|pg_user|mysql\.user|all_tables|user_tables|dba_users)")
_SQL_LITERAL: Final = r"(?:'[^'\n\x00]{0,40}'|\"[^\"\n\x00]{0,40}\"|\d{1,12})"
_SQLI: Final = (
    _rule("sqli-union",
          _p(r"union(?<=\bunion)[\s(]{1,20}(?:all[\s(]{1,20}|distinct[\s(]{1,20})?select\b",
             EVERY, "union")),
    _rule("sqli-subquery", _p(r"\(\s{0,10}select\b[\s(]", ARGS | PATH, "(", "select")),
    _rule("sqli-tautology",
          # ' or '1'='1   ") or ("a"="a   ' || 1=1   ' or a=a
          _each("'\"`", r"[\s)]{0,10}(?:(?:x?or|and)\b|\|\||&&)[\s(]{0,10}(?:not\b[\s(]{0,10})?"
                r"['\"`]?[\w.@-]{0,40}['\"`]?[\s)]{0,10}" + _SQL_CMP, ARGS | PATH),
          # a body: literals on both sides only (code compares names: "or f == 'x'")
          _each("'\"", r"[\s)]{0,10}(?:x?or|\|\|)[\s(]{1,10}" + _SQL_LITERAL + r"[\s)]{0,5}"
                r"(?:=(?!=)|<>|!=|<|>|\blike\b)[\s(]{0,5}(?:['\"]|\d)", BODY),
          # ' or true--   ' or 1#
          _each("'\"`", r"[\s)]{0,10}(?:x?or|and)\b[\s(]{0,10}(?:true|false|not[\s(]{1,10}false"
                r"|\d{1,12})[\s)]{0,10}(?:--|#|/\*|;|$|\x00)", ARGS | PATH),
          # 1 or 1=1   where 1=1   ) or ('a'='a
          [_p(word + r"(?<=\b" + word + r")[\s(]{1,10}" + _SQL_LITERAL + r"[\s)]{0,10}" + op
              + r"[\s(]{0,10}(?:\d|'|\"|\()", ARGS | PATH, gate, word)
           for word, ops in _SQL_TAUTOLOGY_WORDS for op, gate in _SQL_OPERATORS
           if gate[0] in ops],
          # a body gets only literal tautologies: or 1=1, or 'a'='
          _p(r"or(?<=\bor)[\s(]{1,10}(?:\d{1,12}[\s)]{0,5}|'[^'\n\x00]{0,40}'\s{0,5})"
             r"=(?!=)[\s(]{0,5}(?:\d{1,12}\b|')", BODY, "=", "or")),
    _rule("sqli-stacked",
          _p(r";[\s(]{0,10}(?:drop[\s(]{1,10}(?:table|database|schema|view|user|index|function"
             r"|procedure)\b|delete[\s(]{1,10}from\b|insert[\s(]{1,10}into\b|update[\s(]{1,10}"
             r"[\w.`\"\[\]]{1,64}[\s(]{1,10}set\b|truncate[\s(]{1,10}table\b|alter[\s(]{1,10}"
             r"(?:table|user|database|login)\b|create[\s(]{1,10}(?:table|user|login|database"
             r"|function|procedure|trigger)\b|exec(?:ute)?[\s(]{1,10}(?:xp_|sp_|master\.|\()"
             r"|declare[\s(]{1,10}@|shutdown\b|select[\s(]{1,10}(?:\*|[\w.@`\"]{1,64}"
             r"(?:\s{0,3},\s{0,3}[\w.@`\"]{1,64}){0,10})[\s(]{1,10}from\b|select[\s(]{1,10}"
             r"(?:pg_sleep|sleep|benchmark|load_file|@@|char\s{0,3}\(|0x))", ARGS | PATH, ";"),
          # a body: one statement per line is code; on the same line, only the destructive
          _p(r";[ \t(]{0,10}(?:drop[ \t(]{1,10}(?:table|database)\b|shutdown\b|exec(?:ute)?"
             r"[ \t(]{1,10}(?:xp_|sp_)|declare[ \t(]{1,10}@)", BODY, ";")),
    _rule("sqli-time",
          _p(r"(?:['\"`)]|\b(?:and|or|xor|select|if|when|then|else|not|union|waitfor)\b|[,(|&])"
             r"[\s(]{0,10}sleep\s{0,5}\(\s{0,5}\d{1,6}(?:\.\d{1,3})?\s{0,5}\)", EVERY, "(",
             "sleep"),
          _p(_call(["pg_sleep"]), EVERY, "("),
          _p(_call(["benchmark"], r"\s{0,5}\d{4,12}\s{0,5},"), EVERY, "("),
          [_p(r"\bwaitfor[\s(]{1,10}(?:delay|time)[\s(]{1,10}" + q, EVERY, q, "waitfor")
           for q in "'\""],
          _p(_call(["dbms_pipe.receive_message", "dbms_lock.sleep"]), EVERY, "("),
          _p(_call(["randomblob"], r"\s{0,5}\d{7,12}"), EVERY, "(")),
    _rule("sqli-file",
          _p(_call(["load_file"]), EVERY, "("),
          [_p(r"\binto[\s(]{1,10}" + what + r"\s{1,10}" + q, EVERY, q, what)
           for what in ("outfile", "dumpfile") for q in "'\""],
          [_p(r"\bxp_cmdshell[\s(]{0,10}" + q, EVERY, q, "xp_cmdshell") for q in "'\""],
          [_p(r"\bsp_(?:oacreate|oamethod|execute_external_script|makewebtask|addextendedproc)"
              r"[\s(]{0,10}" + q, EVERY, q, "sp_") for q in "'\""],
          _p(_call(["lo_import", "lo_export"]), EVERY, "("),
          [_p(r"\bcopy[\s(]{1,10}[\w.`\"]{1,64}[\s(]{1,10}(?:from|to)[\s(]{1,10}program\s{0,5}"
              + q, EVERY, q, "program") for q in "'\""],
          _p(r"\butl_(?:http|inaddr|file)\.\w{1,40}\s{0,5}\(", EVERY, "(", "utl_")),
    _rule("sqli-probe",
          _p(r"select(?<=\bselect)\b[^\x00]{0,200}?\b" + _SQL_CATALOGS + r"\b", ARGS | PATH,
             "select"),
          _p(r"@@(?:version|datadir|hostname|basedir|servername|global)\b", ARGS | PATH, "@",
             "@@"),
          _p(_call(["extractvalue", "updatexml"]), ARGS | PATH, "("),
          _p(_call(["char"], r"\s{0,5}\d{1,3}\s{0,5}(?:,\s{0,5}\d{1,3}\s{0,5}){2,20}\)"),
             ARGS | PATH, "("),
          _p(r"\((?:(?<=concat\()|(?<=concat \()|(?<=concat_ws\()|(?<=concat_ws \())"
             r"[^)\x00]{0,200}(?:0x[0-9a-f]{2}|@@|\bselect\b|\bchar\s{0,5}\(|['\"]~['\"])",
             ARGS | PATH, "("),
          _p(_call(["convert"], r"\s{0,5}int\s{0,5},"), ARGS | PATH, "("),
          _p(r"(?:['\"`)]|\d)[\s)]{1,10}order[\s(]{1,10}by[\s(]{1,10}\d{1,3}[\s)]{0,5}"
             r"(?:--|#|/\*|$|\x00)", ARGS | PATH, "order", "by")),
    _rule("sqli-comment",
          _each("'\"`", r"[\s)]{0,10}(?:--(?:[\s+-]|$|\x00)|#\s{0,5}(?:$|\x00)"
                r"|;\s{0,5}(?:--|#|$|\x00))", ARGS)),
)

# ---- cross-site scripting

_EVENTS: Final = (
    r"(?:abort|activate|afterprint|animation(?:start|end|iteration|cancel)|auxclick"
    r"|before(?:copy|cut|paste|print|unload|input|toggle|activate|deactivate)|begin|blur"
    r"|bounce|canplay(?:through)?|change|click|close|contextmenu|copy|cuechange|cut|dblclick"
    r"|drag(?:end|enter|exit|leave|over|start)?|drop|durationchange|emptied|end|ended|error"
    r"|finish|focus(?:in|out)?|formdata|fullscreenchange|hashchange|input|invalid"
    r"|key(?:down|press|up)|load(?:eddata|edmetadata|end|start)?|message"
    r"|mouse(?:down|enter|leave|move|out|over|up|wheel)|pagehide|pageshow|paste|pause"
    r"|play(?:ing)?|pointer(?:cancel|down|enter|leave|move|out|over|rawupdate|up)|popstate"
    r"|progress|propertychange|ratechange|readystatechange|repeat|reset|resize|scroll(?:end)?"
    r"|search|seek(?:ed|ing)|select(?:start|ionchange)?|show|stalled|start|storage|submit"
    r"|suspend|timeupdate|toggle|touch(?:cancel|end|move|start)"
    r"|transition(?:cancel|end|run|start)|unhandledrejection|unload|volumechange|waiting"
    r"|webkit[a-z]{3,30}|wheel)")
_XSS: Final = (
    _rule("xss-script", _p(r"<[\s/]{0,5}script\b", EVERY, "<", "script")),
    _rule("xss-event",
          _p(r"on(?:(?<=^on)|(?<=[\s\"'`/;<>+(),\x00]on))" + _EVENTS + r"\s{0,5}=", EVERY,
             "=", "on")),
    _rule("xss-uri",
          # a URL may hold tabs and newlines anywhere: browsers drop them
          _p(r"\b(?:java|vb|live|mocha)[\t\n\r]{0,5}script\s{0,5}:\s{0,5}(?:[\w$]{1,40}\s{0,5}[(.\[=`]"
             r"|[(/%'\"`\[!+~-])", EVERY, ":", "script"),
          _p(r"\bdata\s{0,5}:\s{0,5}text/html", EVERY, ":", "text/html"),
          _p(r"\bdata\s{0,5}:\s{0,5}(?:text|application)/(?:x-)?(?:java|ecma)script", EVERY,
             ":", "script"),
          _p(r"\bdata\s{0,5}:\s{0,5}image/svg\+xml", ARGS | PATH, ":", "svg+xml")),
    _rule("xss-tag",
          _p(r"<[\s/]{0,5}(?:iframe|frame|frameset|object|embed|applet|base|meta|isindex|svg"
             r"|math|xml|import|link|style|form|marquee|template|noscript|xss|bgsound|layer"
             r"|ilayer)\b", ARGS | PATH, "<"),
          _p(r"<[\s/]{0,5}(?:applet|base|frameset|isindex|bgsound|layer|ilayer|xss)\b", BODY,
             "<")),
    _rule("xss-js-context",
          _each("'\"`", r"[\s)]{0,10}[;+\-*/,|&]{1,3}[\s(]{0,10}(?:alert|prompt|confirm|eval"
                r"|fetch|settimeout|setinterval|document\.|window\.|top\[|self\[|parent\["
                r"|location\b|import\s{0,5}\()", ARGS),
          _p(r"\bdocument\.(?:cookie|domain|write|location)\b", ARGS, "document."),
          _p(_call(["string.fromcharcode"]), ARGS, "(")),
    _rule("xss-css",
          _p(r"[:;{\"'=]\s{0,10}expression\s{0,5}\(", EVERY, "(", "expression"),
          _p(r"-moz-binding\s{0,5}:", EVERY, ":", "-moz-binding"),
          _p(r"\bbehavior\s{0,5}:\s{0,5}url\s{0,5}\(", EVERY, ":", "behavior")),
    _rule("xss-attribute",
          _p(r"\bformaction\s{0,5}=", ARGS, "=", "formaction"),
          _p(r"\bsrcdoc\s{0,5}=", ARGS, "=", "srcdoc")),
)

# ---- command and code injection

# A shell command after a separator, followed by what a command takes: an
# option, a path, a URL, a number, a redirection or nothing ("cats & dogs",
# "rock & roll; cat videos" stay clean: no command shape).
_CMD: Final = (
    r"\s{0,5}(?:id|whoami|uname|cat|ls|pwd|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|dash"
    r"|python[23]?|perl|ruby|php|ping|nslookup|sleep|rm|chmod|chown|kill|powershell|pwsh|cmd"
    r"|certutil|bitsadmin|ifconfig|ipconfig|netstat|systeminfo|tasklist|telnet|busybox|echo"
    r"|env|printenv|passwd|crontab|nohup|xterm|tftp|base64|mkfifo|sudo|hostname|type|dir|del"
    r"|net\s{1,5}(?:user|localgroup|view|share))(?:\.exe)?"
    r"(?:\s{1,5}(?:[-/.~$<>|&;`'\"\\]|\d|[a-z]:[\\/]|https?:|ftp:)"
    r"|\s{0,5}(?:[;|&<>`)'\"]|$|\x00))")
_INJECTION: Final = (
    _rule("code-shellshock",
          _p(r"\(\s{0,5}\)\s{0,5}\{", ARGS, "{"),
          _p(r"\(\s{0,5}\)\s{0,5}\{\s{0,5}[:_]\s{0,5};", BODY, "{")),
    _rule("code-log4shell",
          _p(r"\$\{[^}\n\x00]{0,40}(?:jndi\s{0,5}:|\$\{|::-|\b(?:lower|upper|env|sys|java|base64"
             r"|date|main|ctx|k8s|docker|spring|bundle|marker|map|sd|event)\s{0,5}:)", EVERY,
             "${")),
    _rule("cmd-separator",
          _each(";|&`\n", _CMD, ARGS),
          _p(r"\$\(" + _CMD, ARGS, "$(")),
    _rule("cmd-path",
          _p(r"(?:^|[\s;|&`(=\x00])/(?:usr/(?:local/)?)?s?bin/(?:(?:ba|z|k|da|c|tc)?sh|cat|nc"
             r"|ncat|netcat|busybox|python[23]?|perl|wget|curl|id|whoami)\b", ARGS, "bin/"),
          _p(r"/dev/(?:tcp|udp)/\d", EVERY, "/dev/"),
          _p(r"\$\{ifs\}", ARGS),
          _p(r"\$ifs\b", ARGS, "$ifs")),
    _rule("code-template",
          _p(r"\{\{[^\n\x00]{0,100}\}\}", ARGS, "{{"),
          _p(r"\{%[^\n\x00]{0,100}%\}", ARGS, "{%"),
          _p(r"\$\{[^}\n\x00]{1,100}\}", ARGS, "${"),
          _p(r"#\{[^}\n\x00]{1,100}\}", ARGS, "#{"),
          _p(r"\*\{[^}\n\x00]{1,100}\}", ARGS, "*{"),
          _p(r"<%[=@!#]?[^\n\x00]{0,100}%>", ARGS, "<%"),
          _p(r"\{\{[^}\x00]{0,200}__(?:class|mro|subclasses|globals|builtins|import|init)__",
             EVERY, "{{"),
          _p(r"\{\{[^}\x00]{0,100}constructor\.constructor", EVERY, "{{")),
    _rule("code-ognl",
          _p(r"%\{\s{0,5}[(#@\[]", ARGS, "%{"),
          _p(r"#_memberaccess", EVERY),
          _p(r"@java\.lang\.(?:runtime|processbuilder|system)\b", EVERY, "@java.lang.")),
    _rule("code-php",
          _p(r"<\?(?:php|=)", ARGS | PATH, "<?"),
          _p(r"<\?(?:php|=)[^\n\x00]{0,200}\b(?:system|exec|passthru|shell_exec|popen|proc_open"
             r"|eval|assert|base64_decode|gzinflate|str_rot13|file_put_contents|fwrite"
             r"|move_uploaded_file)\s{0,5}\(", BODY, "<?"),
          _p(_call(["eval", "assert"], r"\s{0,5}(?:base64_decode|gzinflate|gzuncompress"
                                       r"|str_rot13|hex2bin|\$_(?:get|post|request|cookie|server))"),
             EVERY, "(")),
    _rule("code-exec",
          _p(_call(["system", "passthru", "exec", "shell_exec", "pcntl_exec", "popen",
                    "proc_open", "eval", "assert", "create_function", "call_user_func",
                    "call_user_func_array"],
                   r"\s{0,5}(?:['\"`$]|base64_decode|chr\s{0,5}\(|str_rot13|gzinflate|\$_)"),
             ARGS, "("),
          _p(_call(["__import__"], r"\s{0,5}['\"]"), ARGS, "("),
          _p(r"os\.(?<=\bos\.)(?:system|popen|exec[lv]p?e?|spawn[lv]p?e?)\s{0,5}\(", ARGS, "(",
             "os."),
          _p(r"\bsubprocess\.(?:call|run|popen|check_output|check_call)\s{0,5}\(\s{0,5}['\"\[]",
             ARGS, "(", "subprocess."),
          _p(_call(["phpinfo"], r"\s{0,5}\)"), ARGS, "("),
          _p(r"\bgetruntime\s{0,5}\(\s{0,5}\)\s{0,5}\.\s{0,5}exec\b", ARGS, "(", "getruntime"),
          _p(_call(["processbuilder"]), ARGS, "("),
          _p(r"\brequire\s{0,5}\(\s{0,5}['\"]child_process['\"]", ARGS, "(", "child_process")),
    _rule("code-inclusion",
          # "://" first (a literal the search skips to), the scheme read behind it
          _p("://(?:" + "|".join(f"(?<=\\b{re.escape(scheme)}://)" for scheme in (
              "php", "phar", "expect", "zip", "glob", "data", "zlib", "compress.zlib", "ogg",
              "rar", "ssh2.exec")) + ")", ARGS, ":", "://")),
    _rule("code-xxe",
          _p(r"<!entity\s{1,10}(?:%\s{1,10})?[\w.-]{1,100}\s{1,10}(?:system|public)\b", EVERY,
             "<!entity")),
    _rule("code-ssi",
          _p(r"<!--\s{0,5}#\s{0,5}(?:exec|include|echo|config|printenv|fsize|flastmod)\b", EVERY,
             "<!--")),
)

# ---- NUL bytes and control characters (the values keep their NULs for this set)

_CONTROL: Final = (
    _rule("control-nul", _p(r"\x00", PATH | ARGS | JSON, "\x00")),
    _rule("control-chars", _p(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", PATH | ARGS, "")),
    _rule("control-crlf",
          _p(r"[\r\n]", PATH, ""),
          _p(r"[\r\n]\s{0,5}[\w-]{1,64}\s{0,5}:", QUERY | COOKIE | HEADER, "")),
)
_CONTROL_RE: Final = re.compile(r"[\x01-\x08\x0a-\x1f\x7f]")

# ---- known scanners

_SCANNER_TOKENS: Final = (
    "sqlmap", "nikto", "nmap", "masscan", "zgrab", "nuclei", "acunetix", "netsparker", "w3af",
    "dirbuster", "gobuster", "wpscan", "havij", "fimap", "openvas", "nessus", "arachni",
    "skipfish", "wfuzz", "fuzz faster u fool", "feroxbuster", "jaeles", "commix", "zmeu",
    "morfeus", "webinspect", "appscan", "paros", "sqlninja", "pangolin", "bsqlbf", "dotdotpwn",
    "wapiti", "whatweb", "l9explore", "l9tcpid", "xsstrike", "interactsh", "burpcollaborator",
)
_SCANNER_RE: Final = re.compile("|".join(re.escape(t) for t in _SCANNER_TOKENS))


def _check_scanner_header(req: _Request) -> tuple[str, str] | None:
    if req.scanner_header is None:
        return None
    return "header:" + req.scanner_header, req.scanner_header


_SCANNERS: Final = (
    _rule("scanner-user-agent",
          _p("|".join(re.escape(t) for t in _SCANNER_TOKENS), HEADER, ""),
          headers=("user-agent",)),
    _Builtin("scanner-header", check=_check_scanner_header),
)

# ---- protocol abuse (method and header fields only)

_BAD_METHODS: Final = frozenset({"TRACE", "TRACK", "DEBUG", "CONNECT"})
_HOST_RE: Final = re.compile(r"[a-z0-9._-]{1,253}(?::[0-9]{1,5})?"
                             r"|\[[0-9a-f:.]{2,45}\](?::[0-9]{1,5})?", re.ASCII | re.IGNORECASE)
_LENGTH_RE: Final = re.compile(r"[ \t]*[0-9]{1,15}[ \t]*", re.ASCII)
_MAX_RANGES: Final = 10


def _check_method(req: _Request) -> tuple[str, str] | None:
    if req.method.upper() in _BAD_METHODS:
        return "method", req.method
    return None


def _check_override(req: _Request) -> tuple[str, str] | None:
    if req.override is not None and req.override[1].strip().upper() in _BAD_METHODS:
        return "header:" + req.override[0], req.override[1]
    return None


def _check_host(req: _Request) -> tuple[str, str] | None:
    hosts = req.hosts
    if len(hosts) > 1:
        return "header:host", f"{len(hosts)} Host fields: " + ", ".join(hosts)
    if hosts and hosts[0] and not _HOST_RE.fullmatch(hosts[0]):
        return "header:host", hosts[0]
    return None


def _check_length(req: _Request) -> tuple[str, str] | None:
    lengths = req.lengths
    if not lengths:
        return None
    if len(lengths) > 1:
        return "header:content-length", f"{len(lengths)} Content-Length fields: " + ", ".join(
            lengths)
    if req.te:
        return "header:content-length", "Content-Length with Transfer-Encoding"
    if not _LENGTH_RE.fullmatch(lengths[0]):
        return "header:content-length", lengths[0]
    return None


def _check_range(req: _Request) -> tuple[str, str] | None:
    if req.range is not None and req.range.count(",") >= _MAX_RANGES:
        return "header:range", req.range
    return None


def _protocol_suspect(req: _Request) -> bool:
    hosts = req.hosts
    if hosts and (len(hosts) > 1 or not _host_ok(hosts[0])):
        return True
    return (req.method.upper() in _BAD_METHODS or req.override is not None
            or bool(req.lengths) or req.range is not None)


_HOSTS_SEEN: dict[str, bool] = {}


def _host_ok(host: str) -> bool:
    if not host:
        return True
    ok = _HOSTS_SEEN.get(host)
    if ok is None:
        ok = _HOST_RE.fullmatch(host) is not None
        if len(_HOSTS_SEEN) >= 1024:
            _HOSTS_SEEN.clear()
        _HOSTS_SEEN[host] = ok
    return ok


_PROTOCOL: Final = (
    _Builtin("protocol-method", check=_check_method),
    _Builtin("protocol-method-override", check=_check_override),
    _Builtin("protocol-host", check=_check_host),
    _Builtin("protocol-content-length", check=_check_length),
    _Builtin("protocol-range", check=_check_range),
)

# ---- the sets

_SQL_COMMENT_RE: Final = re.compile(r"/\*!\d{0,6}|/\*[^*\x00]{0,200}\*/|\*/")
_ENTITY_RE: Final = re.compile(r"&(?:#x?[0-9a-f]{1,8}|[a-z][a-z0-9]{1,31});?")


def _sql_prep(value: str) -> str:
    """SQL comments as spaces ("union/**/select"); a MySQL /*!50000 ... */ keeps its text."""
    return _SQL_COMMENT_RE.sub(" ", value) if "/*" in value else value


def _xss_prep(value: str) -> str:
    """The value, then (after a NUL) its HTML entities decoded, when it has any."""
    if "&" in value and _ENTITY_RE.search(value):
        decoded = html.unescape(value).lower()
        if decoded != value:
            return value + "\x00" + decoded
    return value


def _control_suspect(req: _Request) -> bool:
    # Raw control characters in the request line and header fields are refused by
    # the HTTP parser (strict llhttp); what is left to find comes from decoding.
    return req.nul or (req.decoded and (_CONTROL_RE.search(req.a_hay) is not None
                                        or _CONTROL_RE.search(req.p_hay) is not None))


_UA_SEEN: dict[str, bool] = {}


def _scanner_suspect(req: _Request) -> bool:
    if req.scanner_header is not None:
        return True
    ua = req.ua
    if ua is None:
        return False
    found = _UA_SEEN.get(ua)
    if found is None:
        found = _SCANNER_RE.search(ua.lower()) is not None
        if len(_UA_SEEN) >= 2048:
            _UA_SEEN.clear()
        _UA_SEEN[ua] = found
    return found


@dataclass(frozen=True, slots=True)
class _RuleSet:
    name: str
    scope: str
    rules: tuple[_Builtin, ...]
    prep: Callable[[str], str] | None = None  # applied to each value (and to the hays)
    keep_nul: bool = False  # values keep their NULs
    suspect: Callable[[_Request], bool] | None = None  # used instead of the pattern gates


_SETS: Final = {s.name: s for s in (
    _RuleSet("traversal",
             "Path traversal: ../ and ..\\ segments (also %2e%2e%2f, ..%5c, double-encoded, "
             "overlong UTF-8, %u2215) in the path and arguments; well-known sensitive files "
             "(/etc/passwd, win.ini, /proc/self/, .ssh keys, WEB-INF/web.xml) in the path and "
             "arguments, and in bodies after ../ or file://; dot-files (/.env, /.git/, "
             "/.htpasswd) in the path.",
             _TRAVERSAL),
    _RuleSet("sqli",
             "SQL injection in the path, arguments and bodies: UNION SELECT, tautologies after "
             "a quote or a number (' or '1'='1, 1 or 1=1), stacked statements (; drop table), "
             "time-based probes (sleep(), benchmark(), pg_sleep, waitfor delay), file and "
             "command functions (load_file, into outfile, xp_cmdshell); in the path and "
             "arguments also catalog probes (information_schema, @@version, extractvalue()), "
             "CHAR()/CONCAT() obfuscation, ORDER BY column counting and a comment after a "
             "quote (admin'--). SQL comments read as spaces.",
             _SQLI, prep=_sql_prep),
    _RuleSet("xss",
             "Cross-site scripting in the path, arguments and bodies: <script>, on*= event "
             "handlers, javascript:/vbscript:/data:text/html URLs, CSS expression() and "
             "-moz-binding; in the path and arguments also active tags (<svg>, <iframe>, "
             "<object>, <embed>, <base>, <meta>, <style>, <form>...), a quote breaking into "
             "script (';alert(1)//), document.cookie, formaction=/srcdoc=. HTML entities are "
             "decoded for this set.",
             _XSS, prep=_xss_prep),
    _RuleSet("injection",
             "Command and code injection in arguments: a shell command after ; | & ` $( or a "
             "newline, /bin/sh-style paths, ${IFS}, shellshock () {, template injection "
             "({{ }}, {% %}, ${ }, #{ }, <% %>), OGNL, <?php, system()/exec()/eval()-style "
             "calls with code, stream wrappers (php://, phar://, expect://); everywhere "
             "(bodies too): Log4Shell ${jndi:...} lookups, template gadget chains, "
             "eval(base64_decode(...)), reverse-shell /dev/tcp/, XML external entities, SSI.",
             _INJECTION),
    _RuleSet("control",
             "NUL bytes (raw or decoded) in the path, arguments and JSON strings; other C0 "
             "control characters and DEL in the path and arguments; CR/LF in the path, and "
             "CR/LF followed by a header-like 'Name:' in the query, cookies and headers "
             "(response splitting).",
             _CONTROL, keep_nul=True, suspect=_control_suspect),
    _RuleSet("scanners",
             "Known attack tools by User-Agent (sqlmap, Nikto, Nmap NSE, masscan, zgrab, "
             "Nuclei, Acunetix, Netsparker, w3af, DirBuster, gobuster, WPScan, ffuf, ...) and "
             "by header fields some of them add (Acunetix-*, X-Scanner, X-WIPP, X-Scan-Memo).",
             _SCANNERS, suspect=_scanner_suspect),
    _RuleSet("protocol",
             "Protocol abuse visible in the method and header fields: TRACE, TRACK, DEBUG and "
             "CONNECT (also through X-HTTP-Method-Override), several or invalid Host fields, "
             "several Content-Length fields, a non-numeric or absurd (16+ digits) "
             "Content-Length or one with Transfer-Encoding, a Range of more than 10 ranges.",
             _PROTOCOL, suspect=_protocol_suspect),
)}

RULE_SETS: Final[dict[str, str]] = {name: s.scope for name, s in _SETS.items()}
RULE_IDS: Final[dict[str, tuple[str, ...]]] = {
    name: tuple(r.id for r in s.rules) for name, s in _SETS.items()}
DEFAULT_RULE_SETS: Final[tuple[str, ...]] = tuple(_SETS)
_SET_OF_RULE: Final = {rid: name for name, ids in RULE_IDS.items() for rid in ids}


# --------------------------------------------------------------------------
# The engine

# Gating zones: the path and the arguments share one hay (fewer keyword tests);
# bodies, which can be long, have their own.
_ZONES: Final = (PATH | ARGS, BODY)
# (second gate or "", the gates after it, the union of one set's patterns, the set's bit)
_Entries = list[tuple[str, tuple[str, ...], re.Pattern[str], int]]


def _run(entries: _Entries, hay: str, found: int) -> int:
    """The sets (bits) of the entries whose other gates are in the hay and which match."""
    for gate, more, regex, bit in entries:
        # Most patterns have one gate or two ("" is in every hay): no loop for them.
        if found & bit or gate not in hay:
            continue
        if more and not all(other in hay for other in more):
            continue
        if regex.search(hay) is not None:
            found |= bit
    return found


class _Gates:
    """The built-in patterns of one zone, grouped by gates.

    First gate -> [(the other gates, the union of one set's patterns that have them,
    the set's bit)]. First gates that are one special character are looked up for
    each special character the hay holds (found with one bytes.translate); the
    others, a dozen keywords such as "union" or "..", are looked for with `in`.
    """

    __slots__ = ("special", "keywords")
    special: dict[int, _Entries]  # keyed by the character's code
    keywords: list[tuple[str, _Entries]]

    def __init__(self, patterns: Iterable[tuple[int, _Pattern]]) -> None:
        groups: dict[str, dict[tuple[tuple[str, ...], int], list[str]]] = {}
        for bit, pat in patterns:
            groups.setdefault(pat.gates[0], {}).setdefault((pat.gates[1:], bit), []).append(
                pat.source)
        trees = {first: [(rest[0] if rest else "", rest[1:],
                          re.compile("|".join(f"(?:{src})" for src in sources), _FLAGS), bit)
                         for (rest, bit), sources in by_rest.items()]
                 for first, by_rest in groups.items()}
        self.special = {ord(k): v for k, v in trees.items() if len(k) == 1 and k in SPECIALS}
        self.keywords = [(k, v) for k, v in trees.items()
                         if not (len(k) == 1 and k in SPECIALS)]

    def hits(self, hay: str) -> int:
        """The sets (bits) with a pattern that matches somewhere in the hay."""
        found = 0
        present = hay.encode("latin-1", "ignore").translate(None, _NOT_SPECIAL)
        if present:
            special = self.special
            for char in set(present):
                entries = special.get(char)
                if entries is not None:
                    found = _run(entries, hay, found)
        for keyword, entries in self.keywords:
            if keyword in hay:
                found = _run(entries, hay, found)
        return found


def _safe(text: str, limit: int = 80) -> str:
    """Printable ASCII only (others as \\xNN), at most `limit` characters."""
    out = []
    size = 0
    for char in text:
        code = ord(char)
        piece = char if 0x20 <= code < 0x7F else (f"\\x{code:02x}" if code < 0x100
                                                   else f"\\u{code:04x}")
        size += len(piece)
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


def _excerpt(value: str, start: int, end: int) -> str:
    """Up to 80 safe characters around value[start:end], the match first."""
    lo = max(0, start - 12)
    return _safe(value[lo:max(end, lo) + 80])


def _label(kind: int, name: str) -> str:
    return _target_label(_KIND_TARGET[kind & _KIND_MASK], name)


def _parse_mode(entry: object) -> tuple[_RuleSet, str]:
    if not isinstance(entry, str):
        raise ValueError(f"a rule set is a string, found {entry!r}")
    name, _, mode = entry.partition(":")
    rule_set = _SETS.get(name)
    if rule_set is None:
        raise ValueError(f"unknown rule set {name!r} (known: {', '.join(_SETS)})")
    if mode not in ("", "block", "log"):
        raise ValueError(f"unknown mode {mode!r} in {entry!r}: write NAME, NAME:block or "
                         "NAME:log")
    return rule_set, mode or "block"


def _parse_exclusion(text: object, custom: Collection[str]) -> tuple[str, tuple[str, str | None]
                                                                      | None]:
    """'RULE' or 'RULE@TARGET' -> (RULE, (family, name) or None); RULE may be a set or '*'."""
    if not isinstance(text, str):
        raise ValueError(f"an exclusion is a string, found {text!r}")
    what, at, target = text.partition("@")
    if what != "*" and what not in _SETS and what not in _SET_OF_RULE and what not in custom:
        known = sorted([*_SETS, *_SET_OF_RULE, *custom])
        import difflib

        close = difflib.get_close_matches(what, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{text!r}: no rule or rule set {what!r}{hint}")
    if not at:
        return what, None
    kind, sep, name = target.partition(":")
    if kind not in _TARGET_KINDS or kind == "any":
        raise ValueError(f"{text!r}: the target after '@' is one of method, path, query, "
                         "header, cookie, body, optionally with :NAME")
    if sep and (kind not in _NAMED_TARGETS or not name):
        raise ValueError(f"{text!r}: {target!r} is not a target")
    return what, (kind, (name.lower() if kind == "header" else name) if sep else None)


# The glance (Waf._glance) reads bytes: ASCII lower-casing, which is all a gate
# needs (str.lower() maps no other latin-1 character to ASCII); a query as
# _pairs_hay reads it when nothing is escaped ("+" a space, "&" and "=" separators).
_LOWER_B: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_QUERY_B: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ+&=",
                                  b"abcdefghijklmnopqrstuvwxyz \x00\x00")
_PLAIN_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE",
                                   b"OPTIONS"})
# Characters that send a request on to the full inspection whatever the gates:
# "%" (decoding), "\\" (read as "/" in the path), "*" and "&" (_widen's readings).
_GLANCE_STOP: Final = "%\\*&"
_HOSTS_OK_B: dict[bytes, bool] = {}
# The pieces the glance found free of gates: at most this many of each kind (paths
# and field values; queries), none longer than this (2 MiB per Waf at the most).
_GLANCED_ENTRIES: Final = 4096
_GLANCED_PIECE_MAX: Final = 256
_CLEAN_ENTRIES: Final = 4096
_CLEAN_CHARS: Final = 1 << 20
_CLEAN_VALUE_MAX: Final = 4096


class Waf:
    """Built-in rule sets, custom rules and exclusions, ready to inspect requests.

    Build one per distinct setting when the config loads and share it between
    the routes that have that setting. Across calls ``inspect`` keeps only
    ``last_logs`` (the "log" verdicts of the latest call) and its bounded memories
    of clean Cookie, Referer and User-Agent values and of the paths, queries and
    field values its glance found clean; one instance serves one worker's event
    loop (it is not meant for threads).
    """

    __slots__ = ("last_logs", "_custom", "_sets", "_order", "_gates", "_off", "_targets",
                 "_body_limit", "_prep_sql", "_prep_xss", "_clean", "_clean_size",
                 "_glance_ok", "_glance_stop", "_glance_stop_query", "_glance_words",
                 "_glanced", "_glanced_query")

    def __init__(self, rule_sets: Sequence[str] = DEFAULT_RULE_SETS,
                 custom_rules: Sequence[Rule] = (), exclusions: Sequence[str] = (),
                 body_limit: int = 8192) -> None:
        if isinstance(rule_sets, str):
            raise ValueError("rule_sets is a list of names, not a string")
        if isinstance(body_limit, bool) or not isinstance(body_limit, int) or body_limit < 0:
            raise ValueError(f"body_limit must be a whole number of bytes >= 0, found "
                             f"{body_limit!r}")
        self.last_logs: list[Verdict] = []
        self._body_limit = body_limit
        sets: list[tuple[_RuleSet, str]] = []
        for entry in rule_sets:
            rule_set, mode = _parse_mode(entry)
            if any(rule_set is other for other, _ in sets):
                raise ValueError(f"rule set {rule_set.name!r} is listed twice")
            sets.append((rule_set, mode))
        ids: set[str] = set()
        for rule in custom_rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"custom rules are Rule objects, found {rule!r}")
            if rule.id in ids:
                raise ValueError(f"custom rule id {rule.id!r} is used twice")
            if rule.id in _SET_OF_RULE or rule.id in _SETS or rule.id == "*":
                raise ValueError(f"custom rule id {rule.id!r} is the name of a built-in rule "
                                 "or rule set")
            ids.add(rule.id)
        off: set[str] = set()
        targets: dict[str, list[tuple[str, str | None]]] = {}
        for text in exclusions:
            what, target = _parse_exclusion(text, ids)
            if target is None:
                off.add(what)
            else:
                targets.setdefault(what, []).append(target)
        self._off = frozenset(off)
        self._targets = {k: tuple(v) for k, v in targets.items()}
        everything_off = "*" in off
        self._custom = tuple(r for r in custom_rules if r.id not in off and not everything_off)
        self._sets = tuple((s, mode) for s, mode in sets
                           if s.name not in off and not everything_off)
        gated = [s for s, _ in self._sets if s.suspect is None]
        self._gates = tuple(
            _Gates((1 << i, pat) for i, s in enumerate(gated) for rule in s.rules
                   if rule.id not in off for pat in rule.patterns if pat.kinds & zone)
            for zone in _ZONES)
        bits = {s.name: 1 << i for i, s in enumerate(gated)}
        # (set, mode, its pre-filter or None, its bit in the gates' hits)
        self._order = tuple((s, mode, s.suspect, bits.get(s.name, 0)) for s, mode in self._sets)
        self._prep_sql = any(s.prep is _sql_prep for s in gated)
        self._prep_xss = any(s.prep is _xss_prep for s in gated)
        # Cookie, Referer and User-Agent values of requests that passed every set
        # without a verdict or a log: the hay leaves them out from then on. A page's
        # assets repeat its Referer and Cookie, and a browser's User-Agent never
        # changes. Bounded (entries and characters), emptied when full.
        self._clean: dict[bytes, int] = {}
        self._clean_size = 0
        # The glance: the first gates of the head zone, as bytes. It stands in for the
        # pre-filters it knows only (a new set with its own `suspect` turns it off).
        head = self._gates[0]
        self._glance_words = tuple(word for word, _ in head.keywords)
        stop = {*map(chr, head.special), *_GLANCE_STOP, "\x00"}
        self._glance_stop = "".join(sorted(stop)).encode("latin-1")
        # In a query "&" and "=" separate (_QUERY_B makes them "\x00"s).
        self._glance_stop_query = "".join(sorted(stop - {"&", "="})).encode("latin-1")
        self._glanced: set[bytes] = set()  # paths and field values
        self._glanced_query: set[bytes] = set()
        self._glance_ok = not self._custom and all(self._glance_words) and all(
            s.suspect in (None, _control_suspect, _scanner_suspect, _protocol_suspect)
            for s, _ in self._sets)

    # -- evaluation

    @property
    def body_limit(self) -> int:
        return self._body_limit

    def wants_body(self, content_type: bytes | None) -> bool:
        """Is a request body of this Content-Type worth holding back for inspection?
        Not when bodies are off (body_limit 0) or the type is binary."""
        if not self._body_limit:
            return False
        if not content_type:
            return True
        mtype = content_type.partition(b";")[0].strip().lower().decode("latin-1")
        return not mtype.startswith(_BINARY_TYPES)

    def inspect(self, method: bytes, path: bytes, query: bytes,
                headers: Sequence[tuple[bytes, bytes]], body: bytes = b"") -> Verdict | None:
        """The first block/allow verdict in rule order, or None; "log" ones go to last_logs.

        First a glance, which passes most benign requests at once: it returns None
        only when the full inspection (`_inspect`) would find nothing either; when
        it cannot tell, the full inspection runs. That takes what makes every set
        pass in `_inspect` (see "Speed"): the head zone's hay holds none of the
        first gates, and the pre-filters of the control, scanner and protocol sets
        find nothing. The glance reads the hay from the raw bytes, which is the one
        `_parse` makes when nothing needs decoding ("%"), no reading differs ("\\",
        "*", "&"), no NUL is there, and Cookie, Referer and User-Agent are known
        clean (left out of the hay). No body, no custom rules. An unusual method,
        Content-Length, Range, a method override, several Host fields or a
        scanner's field go to the full inspection too.

        Whether a piece (the path, a field value, the query) holds a gate depends on
        that piece alone (the hay separates them), so the pieces found free of them
        are remembered, bounded, and not looked at again.
        """
        if body or not self._glance_ok or (method != b"GET" and method not in _PLAIN_METHODS):
            return self._inspect(method, path, query, headers, body)
        seen = self._glanced
        # The pieces not seen before, as received (`new`, the query aside), and
        # lower-cased with their stop characters and NULs deleted (`hay`). The fields
        # first: a browser's first request ends the glance at its User-Agent.
        new: list[bytes] = []
        hay: list[bytes] = []
        clean = self._clean
        role_of = _FIELD_ROLES.get
        host = None
        for name, value in headers:
            role = role_of(name, -1)
            if not role:  # _R_SKIP
                continue
            if role < 0:  # a name not seen yet
                role = _field_role(name)
                if role == _R_SKIP:
                    continue
            if role <= _R_REFERER:
                if role == _R_PLAIN:
                    if value not in seen:
                        piece = value.translate(_LOWER_B, self._glance_stop)
                        if len(piece) != len(value):  # it had some
                            return self._inspect(method, path, query, headers, body)
                        new.append(value)
                        hay.append(piece)
                elif value not in clean:  # Cookie, User-Agent, Referer
                    return self._inspect(method, path, query, headers, body)
            elif role == _R_HOST:
                if host is not None:  # several: the protocol set reports them
                    return self._inspect(method, path, query, headers, body)
                host = value
            elif role == _R_TYPE:  # scanned as a plain field (a body has its own way)
                piece = value.translate(_LOWER_B, self._glance_stop)
                if len(piece) != len(value):
                    return self._inspect(method, path, query, headers, body)
                hay.append(piece)
            else:  # a scanner's field, Content-Length, Transfer-Encoding, Range, override
                return self._inspect(method, path, query, headers, body)
        if path not in seen:
            piece = path.translate(_LOWER_B, self._glance_stop)
            if len(piece) != len(path):
                return self._inspect(method, path, query, headers, body)
            new.append(path)
            hay.append(piece)
        if host:
            ok = _HOSTS_OK_B.get(host)
            if ok is None:
                ok = _host_ok(host.decode("latin-1"))
                if len(_HOSTS_OK_B) >= 1024:
                    _HOSTS_OK_B.clear()
                _HOSTS_OK_B[host] = ok
            if not ok:
                return self._inspect(method, path, query, headers, body)
        new_query = query and query not in self._glanced_query
        if new_query:
            piece = query.translate(_QUERY_B, self._glance_stop_query)
            if len(piece) != len(query):
                return self._inspect(method, path, query, headers, body)
            hay.append(piece)
        if hay:
            # bytes `in` is slow (it first tries the needle as an int): look in a str
            text = b"\x00".join(hay).decode("latin-1")
            for word in self._glance_words:
                if word in text:
                    return self._inspect(method, path, query, headers, body)
            for piece in new:
                self._glanced_add(seen, piece)
            if new_query:
                self._glanced_add(self._glanced_query, query)
        if self.last_logs:
            self.last_logs = []
        return None

    def _inspect(self, method: bytes, path: bytes, query: bytes,
                 headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Verdict | None:
        """The full inspection: every set that its gates or its pre-filter point to."""
        logs: list[Verdict] = []
        self.last_logs = logs
        if body and len(body) > self._body_limit:
            body = body[:self._body_limit]
        req = _parse(method, path, query, headers, body, bool(self._custom), self._clean)
        for rule in self._custom:
            found = self._run_custom(rule, req)
            if found is not None:
                verdict = Verdict(rule.action, rule.id, "custom", found[0], found[1])
                if rule.action != "log":
                    return verdict
                logs.append(verdict)
        hits = -1  # lazily: the gated sets with a pattern that matches some zone
        for rule_set, mode, suspect, bit in self._order:
            if suspect is not None:
                if not suspect(req):
                    continue
            else:
                if hits == -1:
                    hits = self._gated(req)
                if not hits & bit:
                    continue
            if req.args is None:  # the exact evaluation reads value by value
                req = _parse(method, path, query, headers, body, True, self._clean)
            match = self._run_set(rule_set, req)
            if match is not None:
                verdict = Verdict(mode, match[0], rule_set.name, match[1], match[2])
                if mode != "log":
                    return verdict
                logs.append(verdict)
        if req.fresh and not logs:
            self._remember(req.fresh)
        return None

    @staticmethod
    def _glanced_add(seen: set[bytes], piece: bytes) -> None:
        if len(piece) <= _GLANCED_PIECE_MAX:
            if len(seen) >= _GLANCED_ENTRIES:
                seen.clear()
            seen.add(piece)

    def _remember(self, values: list[bytes]) -> None:
        clean = self._clean
        for value in values:
            size = len(value)
            if size > _CLEAN_VALUE_MAX:
                continue
            if len(clean) >= _CLEAN_ENTRIES or self._clean_size + size > _CLEAN_CHARS:
                clean.clear()
                self._clean_size = 0
            clean[value] = size
            self._clean_size += size

    def _gated(self, req: _Request) -> int:
        head_gates, body_gates = self._gates
        hits = head_gates.hits(self._widen(req.p_hay + "\x00" + req.a_hay))
        if req.t_hay:
            hits |= body_gates.hits(self._widen(req.t_hay))
        return hits

    def _widen(self, hay: str) -> str:
        """The hay and, when some set reads it differently, those readings too."""
        if self._prep_sql and "/*" in hay:
            hay = hay + "\x00" + _sql_prep(hay)
        if self._prep_xss and "&" in hay:
            hay = _xss_prep(hay)
        return hay

    def _excluded(self, rule_id: str, set_name: str, family: str, name: str) -> bool:
        """Is (rule or set) excluded on this target? `family`: method, path, query, header,
        cookie or body; `name`: the argument, field or key as decoded ("" for none)."""
        targets = self._targets
        if not targets:
            return False
        for key in (rule_id, set_name, "*"):
            for ex_family, ex_name in targets.get(key, ()):
                if ex_family == family and (ex_name is None or ex_name == name):
                    return True
        return False

    def _run_set(self, rule_set: _RuleSet, req: _Request) -> tuple[str, str, str] | None:
        """(rule id, target, excerpt) of the set's first rule that matches, in rule order."""
        prep = rule_set.prep
        keep_nul = rule_set.keep_nul
        name = rule_set.name
        prepared: dict[tuple[int, frozenset[str] | None],
                       tuple[list[tuple[int, str, str]], str]] = {}
        for rule in rule_set.rules:
            rule_id = rule.id
            if rule_id in self._off:
                continue
            if rule.check is not None:
                found = rule.check(req)
                if found is not None:
                    family, _, field_name = found[0].partition(":")
                    if not self._excluded(rule_id, name, family, field_name):
                        return rule_id, found[0], _safe(found[1])
                continue
            for pat in rule.patterns:
                gates = pat.gates
                # The values of these kinds, prepared once per set (not once per
                # pattern), and joined: a pattern that finds nothing in all of them
                # at once is not tried value by value. Hundreds of form fields
                # would otherwise cost rules x patterns x fields searches.
                group = (pat.kinds, rule.headers)
                got = prepared.get(group)
                if got is None:
                    items = [(kind, item, prep(value) if prep is not None else value)
                             for kind, item, value in _values(req, pat.kinds, rule.headers,
                                                              keep_nul)]
                    got = prepared[group] = (items, "\x00".join(v for _, _, v in items))
                items, joined = got
                if not all(gate in joined for gate in gates):
                    continue  # the pattern cannot match without its gates
                if len(items) > 1 and _anchorless(pat) and pat.regex.search(joined) is None:
                    continue
                for kind, item, value in items:
                    if not all(gate in value for gate in gates):
                        continue
                    match = pat.regex.search(value)
                    if match is None:
                        continue
                    if not self._excluded(rule_id, name, _KIND_TARGET[kind & _KIND_MASK], item):
                        return (rule_id, _label(kind, item),
                                _excerpt(value, match.start(), match.end()))
        return None

    def _run_custom(self, rule: Rule, req: _Request) -> tuple[str, str] | None:
        first: tuple[str, str] | None = None
        for cond in rule.conditions:
            found = None
            for family, item, value in _condition_values(cond, req):
                if cond.test(value) and not self._excluded(rule.id, "custom", family, item):
                    found = _target_label(family, item), value
                    break
            if found is None:
                return None
            if first is None:
                first = found
        assert first is not None
        return first[0], _excerpt(first[1], 0, 0)


def _values(req: _Request, kinds: int, headers: frozenset[str] | None,
            keep_nul: bool) -> Iterable[tuple[int, str, str]]:
    """(kind, name, lower-cased value) of the request's values of these kinds."""
    if kinds & PATH:
        yield PATH, "", (req.path.lower().replace("\\", "/") if keep_nul else req.p_hay)
    assert req.args is not None and req.texts is not None
    if kinds & ARGS:
        for kind, name, value in req.args:
            if kind & kinds:
                if headers is not None and (kind != HEADER or name not in headers):
                    continue
                value = value.lower()
                if not keep_nul and "\x00" in value:
                    value = value.replace("\x00", "")
                yield kind, name, value
    if kinds & BODY and headers is None:
        for kind, name, value in req.texts:
            if kind & kinds:
                value = value.lower()
                if not keep_nul and "\x00" in value:
                    value = value.replace("\x00", "")
                yield kind, name, value


_ANCHORED: dict[str, bool] = {}


def _anchorless(pat: _Pattern) -> bool:
    """No ^, $, \\A or \\Z: then a match in one value is a match in the values
    joined with NUL, so the joined text is a sound pre-check. Every substring of
    a value is in the joined text, and the context the NUL gives differs from a
    value's edge only for lookarounds and anchors: the NUL is not a word
    character (\\b and \\B see it as an edge), the built-in negative lookaheads
    test for "=", and a positive lookbehind that the NUL satisfies only adds
    matches (the per-value search then decides)."""
    known = _ANCHORED.get(pat.source)
    if known is None:
        known = _ANCHORED[pat.source] = re.search(r"(?<!\\)[$^]|\\[AZ]", pat.source) is None
    return known


def _target_label(family: str, name: str) -> str:
    return f"{family}:{_safe(name, 64)}" if name else family


def _condition_values(cond: Condition, req: _Request) -> Iterable[tuple[str, str, str]]:
    """(target family, name, decoded value) triples a custom condition looks at."""
    assert req.args is not None and req.texts is not None
    kind = cond.kind
    name = cond.name
    if kind == "method":
        yield "method", "", req.method
    elif kind == "path":
        yield "path", "", req.path
    elif kind == "header":
        assert name is not None
        wanted = name.encode("latin-1")
        for raw_name, raw_value in req.raw_headers:
            if raw_name.lower() == wanted:
                yield "header", name, raw_value.decode("latin-1")
    elif kind in ("query", "cookie"):
        if name is None:  # the whole query
            if req.query_text is None:
                text = req.query.replace("+", " ")
                req.query_text = _decode(text) if "%" in text else text
            yield "query", "", req.query_text
            return
        want = QUERY if kind == "query" else COOKIE
        for item_kind, item_name, value in req.args:
            if item_kind == want and item_name == name:
                yield kind, item_name, value
    elif kind == "body":
        if name is None:
            if req.body_text:
                yield "body", "", req.body_text
            return
        for item_kind, item_name, value in (*req.args, *req.texts):
            if item_kind in (FORM, JSON) and item_name == name:
                yield "body", item_name, value
    else:  # any
        yield "path", "", req.path
        for item_kind, item_name, value in req.args:
            if not item_kind & _NAME:
                yield _KIND_TARGET[item_kind], item_name, value
        for _kind, item_name, value in req.texts:
            yield "body", item_name, value


# --------------------------------------------------------------------------
# Config: [[waf.rules]] tables

_RULE_KEYS: Final = ("id", "match", "action", "description")
_MATCH_KEYS: Final = ("target", *OPERATORS, "length", "case_sensitive")


def _unknown(table: Mapping[str, Any], allowed: Sequence[str], key: str) -> None:
    import difflib

    for name in table:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{key}.{name}: unknown key (expected one of: "
                             f"{', '.join(allowed)}){hint}")


def _parse_condition(table: object, key: str) -> Condition:
    if not isinstance(table, Mapping):
        raise ValueError(f"{key}: expected a table like {{ target = \"path\", prefix = "
                         f"\"/admin\" }}, found {type(table).__name__}")
    _unknown(table, _MATCH_KEYS, key)
    target = table.get("target")
    if not isinstance(target, str):
        raise ValueError(f"{key}.target: required, a string (method, path, query, query:NAME, "
                         "header:NAME, cookie:NAME, body, body:NAME or any)")
    ops = [op for op in OPERATORS if op in table]
    if len(ops) != 1:
        raise ValueError(f"{key}: give exactly one of {', '.join(OPERATORS)}"
                         + (f" (found {', '.join(ops)})" if ops else ""))
    op = ops[0]
    flags = {}
    for flag in ("length", "case_sensitive"):
        if flag in table:
            if not isinstance(table[flag], bool):
                raise ValueError(f"{key}.{flag}: expected true or false, found {table[flag]!r}")
            flags[flag] = table[flag]
    try:
        _split_target(target)
    except ValueError as exc:
        raise ValueError(f"{key}.target: {exc}") from None
    try:
        return Condition(target, op, table[op], **flags)
    except ValueError as exc:
        where = "length" if "length" in str(exc) and flags.get("length") else op
        raise ValueError(f"{key}.{where}: {exc}") from None


def parse_rule(table: Mapping[str, Any], key: str) -> Rule:
    """A custom rule from its config table (``key`` is its key path, e.g. "waf.rules[2]").

    Raises ValueError("KEY.FIELD: reason") for the first problem found;
    regexes are checked with :func:`check_regex`.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"{key}: expected a table, found {type(table).__name__}")
    _unknown(table, _RULE_KEYS, key)
    rule_id = table.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID_RE.fullmatch(rule_id):
        raise ValueError(f"{key}.id: required, 1 to 64 letters, digits, '-', '_' or '.', "
                         f"found {rule_id!r}")
    action = table.get("action", "block")
    if action not in ACTIONS:
        raise ValueError(f"{key}.action: expected block, log or allow, found {action!r}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{key}.description: expected a string, found {description!r}")
    match = table.get("match")
    conditions: tuple[Condition, ...]
    if isinstance(match, Mapping):
        conditions = (_parse_condition(match, f"{key}.match"),)
    elif isinstance(match, (list, tuple)) and match:
        conditions = tuple(_parse_condition(one, f"{key}.match[{i}]")
                           for i, one in enumerate(match))
    else:
        raise ValueError(f"{key}.match: required, a table (or an array of tables, all of "
                         "which must match)")
    return Rule(rule_id, conditions, action, description)
