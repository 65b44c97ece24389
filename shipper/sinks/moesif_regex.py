"""Moesif's regex_config patterns come from the vendor and are matched against what clients send: a pattern that
backtracks for ever must be refused before it is used (`backtracks_safely`), and what it is matched against is
bounded (MATCH_CHARS). Used by moesif_sampling.parse_regex_config and regex_rate."""

from __future__ import annotations

import re
from typing import Any

# Python's re backtracks: a rule such as `(a+)+$` takes seconds on 26 characters and years on 60, `\d*\d*\d*x`
# minutes on 1,000, and it holds the GIL, so every lane of the process stops with the one matching. Conditions
# are matched against at most MATCH_CHARS of each value, and a pattern that can be ambiguous is refused (never
# matches, as an invalid one): a repeat over a repeat, an alternation or a backreference; or two repeats that can
# take the same characters with nothing between them that only one of them can take — one such pair is allowed
# in a pattern anchored at the start (`^/api/.*/orders/.*$`: at most quadratic in MATCH_CHARS).
MATCH_CHARS = 1024
_WIDE = 16  # a repeat of more than this many is "wide": it gives the matcher that many ways to split a value
_PROBES = [chr(c) for c in range(256)] + ["\u00e9", "\u0436", "\u4e2d", "\u2028", "\U0001f600"]
_ANY = frozenset(_PROBES)
_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
               "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}


def backtracks_safely(value: str) -> bool:
    """Whether matching `value` as a pattern is at worst quadratic in the length of what it is matched against
    (see above). Decided on the parsed pattern (re._parser: the standard library's own parser)."""
    import re._parser as sre  # type: ignore[import-not-found]  # the stdlib's own parser; once per /v1/config answer

    try:
        parsed = sre.parse(value)
    except (re.error, RecursionError, OverflowError):
        return False
    if not _unambiguous(parsed.data, inside_repeat=False):
        return False
    first = parsed.data[0] if len(parsed.data) else None
    anchored = first is not None and str(first[0]) == "AT" and str(first[1]) in ("AT_BEGINNING", "AT_BEGINNING_STRING")
    return _overlapping_pairs(list(parsed.data)) <= (1 if anchored else 0)


def _unambiguous(items: Any, inside_repeat: bool) -> bool:
    for op, arg in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return False
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = arg
            if inside_repeat and high != low:
                return False  # a variable repeat inside a repeat: (a+)+, (\w+\s?)*
            if not _unambiguous(body, inside_repeat or high > 1):
                return False
        elif name == "BRANCH":
            if inside_repeat:
                return False  # alternatives inside a repeat: (a|a)*, (ab|a)*
            if not all(_unambiguous(branch, inside_repeat) for branch in arg[1]):
                return False
        elif name in ("SUBPATTERN", "ASSERT", "ASSERT_NOT", "ATOMIC_GROUP"):
            body = arg if name == "ATOMIC_GROUP" else arg[-1]
            if not _unambiguous(body, inside_repeat):
                return False
    return True


def _chars(item: Any) -> frozenset[str]:
    """The characters (of a probe alphabet, either case) one single-character item can take; all when unsure."""
    op, arg = item
    name = str(op)
    if name == "LITERAL":
        found = {chr(arg)}
    elif name == "NOT_LITERAL":
        found = set(_ANY) - {chr(arg)}
    elif name == "IN":
        found = set()
        negate = False
        for sub_op, sub_arg in arg:
            sub = str(sub_op)
            if sub == "NEGATE":
                negate = True
            elif sub == "LITERAL":
                found.add(chr(sub_arg))
            elif sub == "RANGE":
                found.update(c for c in _PROBES if sub_arg[0] <= ord(c) <= sub_arg[1])
            elif sub == "CATEGORY" and str(sub_arg) in _CATEGORIES:
                found.update(c for c in _PROBES if re.match(_CATEGORIES[str(sub_arg)], c))
            else:
                return _ANY
        if negate:
            found = set(_ANY) - found
    else:
        return _ANY
    return frozenset(found | {c.lower() for c in found} | {c.upper() for c in found})


def _overlapping_pairs(items: list[Any]) -> int:
    """How many wide repeats follow another that can take the same characters, with nothing between them that
    the earlier one cannot take (a single character the earlier one cannot take ends its reach)."""
    pairs = 0
    reaching: list[frozenset[str]] = []  # the character sets of the wide repeats that could still be extending
    for op, arg in _flat(items):
        name = str(op)
        if name in _REPEATS and arg[1] > _WIDE:
            body = list(arg[2])
            single = len(body) == 1 and str(body[0][0]) in _SINGLE
            chars = _chars(body[0]) if single else _ANY
            pairs += sum(1 for earlier in reaching if earlier & chars)
            reaching.append(chars)
        elif name in _SINGLE:
            chars = _chars((op, arg))
            reaching = [earlier for earlier in reaching if earlier & chars]
        elif name != "AT" and _has_wide(arg):
            pairs += len(reaching) + 1  # a wide repeat in an alternative or an assertion: counted against all
            reaching.append(_ANY)
    return pairs


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_SINGLE = ("LITERAL", "NOT_LITERAL", "IN", "ANY")


def _flat(items: Any) -> list[Any]:
    """The items of a pattern with its plain groups' items in their place (a group is no boundary)."""
    out: list[Any] = []
    for op, arg in items:
        if str(op) == "SUBPATTERN":
            out.extend(_flat(arg[-1]))
        else:
            out.append((op, arg))
    return out


def _has_wide(arg: Any) -> bool:
    """Whether a pattern item's argument holds a wide repeat anywhere."""
    if isinstance(arg, (tuple, list)) or hasattr(arg, "data"):
        parts = list(arg.data if hasattr(arg, "data") else arg)
        if len(parts) == 2 and str(parts[0]) in _REPEATS and isinstance(parts[1], tuple) and parts[1][1] > _WIDE:
            return True
        return any(_has_wide(part) for part in parts)
    return False
