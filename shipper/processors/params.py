"""The masks of parameters: Kong's decoded query object, a query string, a `#fragment`, the query and fragment
of a raw path or an upstream URI, and the userinfo of a URL. Part of `masking.Masker`, which mixes them in
(`ParamMasks`); one set of names (`names.NameSet`) decides, as everywhere else.

Speed (issue 16): a query string is looked at on every record, and most hold no secret name. A plain one (only
`&` separators, no `;`, `?` or `#`: nearly all) has its names taken out by one chain of C calls (`split`, then
`str.partition` and `itemgetter` through `map`, no Python step a parameter) and checked against the names seen
clean before with one set operation; only when one is not is anything masked, at the parts whose name is a
secret. Other texts take the general way (`_params_clean`, `_mask_param_values`). Kong's decoded query object is
never taken as evidence about the raw query string: with key-auth's `hide_credentials` (or any plugin that
rewrites the query) it lacks the `apikey` that the raw request line still holds.
"""

from __future__ import annotations

import re
from itertools import repeat
from operator import itemgetter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import orjson

from shipper.processors.names import NameSet

MASK = "*****"
_PARAM_KEYS = re.compile(r"(?:^|[&;?])([^&;=?]*)=")  # the names of `a=1&b=2`, `/cb?token=x` (after the `?`)
_SEPARATORS = re.compile(r"([&;])")
QUERY_NAMES_LEARNED = 64  # names of plain queries in the patterns: each part tries them in turn; more, the slow way
_EQUALS = repeat("=")  # endless: map stops at the parts' end
_BEFORE = itemgetter(0)
# Userinfo runs to the authority's last `@` (a password with an unescaped `@` in it is masked whole).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]+@")
# A value that is a target percent-encoded once or more, as a redirect is sent (`next=%2Fcb%3Ftoken%3Dx`,
# `redirect_uri=https%3A%2F%2Fapp%2Fcb%23access_token%3Dx`, `%253F` twice): an encoded `?`, `#` or `://`.
_ENCODED_TARGET = re.compile(r"%(?:25)*(?:3[Ff]|23|3[Aa]%(?:25)*2[Ff]%(?:25)*2[Ff])")
# A JSON Web Token (JWS or JWE: a `{"`-header in base64url, then at least two more `.` parts) is a bearer credential
# under whatever name it travels (`X-Goog-Iap-Jwt-Assertion`, `?id_token_hint=`, `{"assertion": …}`): masked
# wherever a value holds one. Base64 of JSON alone (`eyJhIjoxfQ`, no dots) is data, not a token.
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*")


def mask_jwts(text: str) -> str:
    """`text` with every JSON Web Token in it masked; `text` itself when it holds none."""
    if "eyJ" not in text:
        return text
    masked = JWT.sub(MASK, text)
    return text if masked == text else masked


# A value that is a JSON object or array, form-encoded (`payload=%7B%22token%22%3A…`): masked by key.
_ENCODED_JSON = re.compile(r"(?:^|(?<==))%(?:7[Bb]|5[Bb](?:%7[Bb]|%22|%5[Bb]))")
# Targets inside values inside targets...: past this many, a value is masked whole (each level is a few frames
# of recursion, and `a=?b=?c=?...` has as many levels as a client likes).
MAX_NESTING = 8


def _one_of(names: list[str]) -> str:
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))


def _query_of(names: list[str]) -> re.Pattern[str]:
    """The plain queries (`a=1&b=2`) whose every part is named by one of `names`."""
    part = f"(?:{_one_of(names)})=[^&]*+"  # possessive: a query that does not match fails at once
    return re.compile(f"{part}(?:&{part})*+")


class ParamMasks:
    """The parameter masks of a `Masker` (which sets `names`, calls `__init__` and provides `mask_value`)."""

    names: NameSet
    mask_value: Callable[..., Any]  # the Masker's: a value masked by key at any depth (JSON inside a parameter)

    def __init__(self) -> None:
        self._learned: dict[str, bool] = {}  # names of plain queries -> secret
        # Patterns over the learned names (see _learn): every name a clean one; every name a learned one; for
        # each learned secret name, the parts it names (after an `&`) and their masked form.
        self._plain: tuple[re.Pattern[str] | None, re.Pattern[str] | None, tuple[tuple[re.Pattern[str], str], ...]] = (
            None, None, ()
        )  # fmt: skip

    def query_is_clean(self, query: dict[str, Any]) -> bool:
        """Whether Kong's decoded query object has nothing to mask (the usual case, tested before `mask_query`):
        every name seen clean, and no value that may hold a target (`next=/cb?token=x`, once decoded by Kong)."""
        return query.keys() <= self.names.clean and not _values_may_hold_targets(query)

    def mask_query(self, query: dict[str, Any], depth: int = 0) -> dict[str, Any]:
        """Kong's decoded query object with the values of secret names masked, and the secret parameters of the
        values that are targets (`next=/cb?token=x`); `query` itself when nothing is masked. Kong's values are
        texts, `true` and lists of texts; an object in it (a hand-made or hostile record) is masked as a query
        object of its own, at any depth (MASK whole past MAX_NESTING)."""
        names = self.names
        keys = query.keys()
        hits = keys & names.hit if keys <= names.known else names.secrets_in(keys)
        masked = dict(query) if hits else None
        if not _values_may_hold_targets(query):
            # No value is a target (the usual case): the names decide alone.
            for key in hits:
                masked[key] = MASK  # type: ignore[index]  # made with `hits`
            return query if masked is None else masked
        for key, value in query.items():
            if key in hits:
                masked[key] = MASK  # type: ignore[index]  # made with `hits`
                continue
            new = self._mask_query_value(value, depth)
            if new is not value:
                if masked is None:
                    masked = dict(query)
                masked[key] = new
        return query if masked is None else masked

    def _mask_query_value(self, value: Any, depth: int) -> Any:
        """A value of a query object masked (`value` itself when nothing is): a text as a possible target, a list
        item by item, an object as a query object one level down."""
        if type(value) is str:
            return self.mask_in_value(value)
        if type(value) is list:  # a list of texts (a repeated name) one level down; lists in lists further
            if depth >= MAX_NESTING:
                return MASK
            items = [self._mask_query_value(item, depth + 1) for item in value]
            return value if all(a is b for a, b in zip(items, value)) else items
        if type(value) is dict:
            return MASK if depth >= MAX_NESTING else self.mask_query(value, depth + 1)
        return value

    def mask_in_value(self, value: str, depth: int = 0) -> str:
        """A value that may itself be a target: `/cb?token=x`, `https://user:pw@host/`, `/p;token=x`, or one of
        them percent-encoded once or more, as redirects are sent (`%2Fcb%3Ftoken%3Dx`). Its parameters and
        userinfo masked (an encoded one encoded again, `*` kept); `value` itself when nothing is; MASK whole
        past MAX_NESTING targets inside values. A JSON Web Token in it is masked too (`?id_token_hint=eyJ…`)."""
        if "eyJ" in value:
            value = mask_jwts(value)  # a new object when masked: the callers see a change
        if "{" in value or "%" in value:  # JSON as a value (`payload=%7B%22token%22…`, Slack's form posts)
            masked = self._mask_json_param(value, depth)
            if masked is not None:
                return masked
        if "?" in value or "#" in value or ";" in value or ("@" in value and "://" in value):
            return MASK if depth >= MAX_NESTING else self.mask_url(value, None, depth + 1)
        if "%" in value and _ENCODED_TARGET.search(value):
            if depth >= MAX_NESTING:
                return MASK
            decoded = unquote(value)
            inner = self.mask_in_value(decoded, depth + 1)
            return value if inner is decoded else quote(inner, safe="*")
        return value

    def _mask_json_param(self, value: str, depth: int) -> str | None:
        """A parameter's value that is a JSON object or array, raw or form-encoded, masked by key (`value` itself
        when nothing is secret); None when it is not one."""
        encoded = _ENCODED_JSON.match(value) is not None
        if not encoded and value[:1] not in ("{", "["):
            return None
        if depth >= MAX_NESTING:
            return MASK
        try:
            inner = orjson.loads(unquote_plus(value) if encoded else value)
        except orjson.JSONDecodeError:
            return None
        if type(inner) is not dict and type(inner) is not list:
            return None
        masked = self.mask_value(inner, depth + 1)
        if masked is inner:
            return value
        text = orjson.dumps(masked).decode()
        return quote_plus(text, safe="*") if encoded else text

    def mask_targets(self, qs: str, raw: str, upstream: str | None) -> tuple[str, str, str | None]:
        """(query string, raw path, upstream URI) masked, each the same object when nothing in it is secret."""
        masked_qs = self.mask_params(qs) if qs else qs
        if "#" in raw or "@" in raw or ";" in raw or not (raw.endswith(qs) and raw.find("?") == len(raw) - len(qs) - 1):
            masked_raw = self._with_query(raw, qs, masked_qs)
        elif masked_qs is qs:
            masked_raw = raw  # `path?qs`, the query string just checked
        else:
            masked_raw = raw[: len(raw) - len(qs)] + masked_qs
        if upstream:
            if upstream == raw:  # Kong's upstream URI is often the request's target
                upstream = masked_raw
            elif "?" in upstream or "#" in upstream or "@" in upstream or ";" in upstream:
                upstream = self._with_query(upstream, qs, masked_qs)
        return masked_qs, masked_raw, upstream

    def _with_query(self, target: str, qs: str, masked_qs: str) -> str:
        # The raw path and the upstream URI usually carry the very query string just masked: reuse it.
        if "#" in target or "@" in target or ";" in target:
            return self.mask_url(target, (qs, masked_qs))
        mark = target.find("?")
        if mark < 0:
            return target
        query = target[mark + 1 :]
        if query == qs:
            return target if masked_qs is qs else target[: mark + 1] + masked_qs
        masked = self.mask_params(query)
        return target if masked is query else target[: mark + 1] + masked

    def mask_params(self, text: str, depth: int = 0) -> str:
        """`a=1&token=x` → `a=1&token=*****` (also `;` separators, a name after a `?`, and the parameters of a
        value that is a target, encoded or not: `next=%2Fcb%3Ftoken%3Dx`). `depth`: targets around this text."""
        if "=" not in text:
            return text
        if (
            ";" in text or "?" in text or "#" in text or "eyJ" in text or "{" in text
            or ("%" in text and (_ENCODED_TARGET.search(text) is not None or _ENCODED_JSON.search(text) is not None))
            or ("@" in text and "://" in text)
        ):  # _may_hold_target, inline: every query string comes here
            return text if self._params_clean(text) else self._mask_param_values(text, depth)
        clean, known, secret = self._plain
        if clean is not None and clean.fullmatch(text):
            return text
        if secret and known.fullmatch(text):  # type: ignore[union-attr]  # set with `secret`
            # Every part's name is a learned one: mask the parts of each secret name (each after an `&`, so the
            # pattern starts with a literal, found fast; the replacement is literal too, no template).
            masked = joined = "&" + text
            for pattern, replacement in secret:
                masked = pattern.sub(replacement, masked)
            return text if masked is joined else masked[1:]
        return self._mask_plain(text)

    def _mask_plain(self, text: str) -> str:
        # A plain query: its parameters are its `&` parts, each named by the text before its first `=`. The
        # names are taken out in C (no Python step a part); a part without `=` yields its whole text, which
        # names nothing: it is classified with the names, never masked.
        parts = text.split("&")
        keys = list(map(_BEFORE, map(str.partition, parts, _EQUALS)))
        names = self.names
        if len(self._learned) < QUERY_NAMES_LEARNED and not self._learned.keys() >= set(keys):
            self._learn(keys)
        if names.clean.issuperset(keys):
            return text
        if names.known.issuperset(keys):
            hits = names.hit.intersection(keys)
        else:
            hits = {key for key in keys if names.is_secret(key)}
        if not hits:
            return text
        changed = False
        for i, key in enumerate(keys):
            if key in hits and "=" in parts[i]:
                parts[i] = f"{key}={MASK}"
                changed = True
        return "&".join(parts) if changed else text

    def _learn(self, keys: list[str]) -> None:
        # The patterns that take a plain query apart in one C call once its names are all learned. A name here
        # holds no `&` and no `=` (split and partition saw to it), so a pattern's parts are the query's parts
        # and its names their names. Swapped in as one tuple: a thread never sees a `known` with a secret name
        # that its `secret` lacks.
        learned = self._learned
        size = len(learned)
        for key in keys:
            if key not in learned and len(learned) < QUERY_NAMES_LEARNED and len(key) <= 64:
                learned[key] = self.names.is_secret(key)
        if len(learned) == size:
            return  # nothing new (a long name is not learned: it takes the slow way)
        clean = [k for k, is_secret in learned.items() if not is_secret]
        secret = [k for k, is_secret in learned.items() if is_secret]
        self._plain = (
            _query_of(clean) if clean else None,
            _query_of(clean + secret),
            tuple(
                (re.compile(f"&{re.escape(name)}=[^&]*+"), f"&{name}={MASK}".replace("\\", "\\\\")) for name in secret
            ),
        )

    def _params_clean(self, text: str) -> bool:
        """Whether every parameter name in `text` was seen clean before (False: it must be looked at)."""
        if "#" in text or "eyJ" in text or "{" in text or _may_hold_target(text) or _ENCODED_JSON.search(text):
            # `next=/cb#token=x`, `next=%2Fcb%3Ftoken%3Dx`, `next=https://u:pw@h`: what is secret hides from the
            # names below
            return False
        clean = self.names.clean
        if ";" in text or "?" in text:
            return clean.issuperset(_PARAM_KEYS.findall(text))
        # Only `&` separators: the regex's names are the texts before the first `=` of the parts that have one,
        # found here at about half its cost.
        return clean.issuperset([part.partition("=")[0] for part in text.split("&") if "=" in part])

    def _mask_param_values(self, text: str, depth: int) -> str:
        names = self.names
        # Split on `&` alone unless there is a `;`: the same parts as the regex's, and no separators to keep.
        step = 2 if ";" in text else 1
        parts = _SEPARATORS.split(text) if step == 2 else text.split("&")
        changed = False
        for i in range(0, len(parts), step):
            key, eq, value = parts[i].partition("=")
            if not eq:
                continue
            if names.is_secret(key.rpartition("?")[2]):
                parts[i] = f"{key}={MASK}"
                changed = True
            else:  # a target as a value: `next=/cb?token=x`, encoded or not
                inner = self.mask_in_value(value, depth)
                if inner is not value:
                    parts[i] = f"{key}={inner}"
                    changed = True
        if not changed:
            return text
        return "".join(parts) if step == 2 else "&".join(parts)

    def mask_target(self, target: str, known: tuple[str, str] | None = None, depth: int = 0) -> str:
        """A path with `;params`, `?query` and `#fragment`: all masked. `known` is a (query, masked query)
        already done."""
        if "?" not in target and "#" not in target and ";" not in target:
            return target
        rest, hash_, fragment = target.partition("#")
        base, mark, query = rest.partition("?")
        masked_base = self._mask_path_params(base, depth) if ";" in base else base
        if known is not None and query == known[0]:
            masked_query = known[1]
        else:
            masked_query = self.mask_params(query, depth) if query else query
        masked_fragment = self.mask_params(fragment, depth) if fragment else fragment
        if masked_base is base and masked_query is query and masked_fragment is fragment:
            return target
        return masked_base + mark + masked_query + hash_ + masked_fragment

    def _mask_path_params(self, path: str, depth: int) -> str:
        # `/orders;jsessionid=x;token=y/items`: each segment's `;name=value` parameters, by the same names.
        segments = path.split("/")
        changed = False
        for i, segment in enumerate(segments):
            if ";" in segment:
                head, sep, params = segment.partition(";")
                masked = self.mask_params(params, depth)
                if masked is not params:
                    segments[i] = head + sep + masked
                    changed = True
        return "/".join(segments) if changed else path

    def mask_url(self, url: str, known: tuple[str, str] | None = None, depth: int = 0) -> str:
        """A URL (or text holding URLs): userinfo masked, and the parameters of its path, query and fragment."""
        if "@" in url and "://" in url:
            url = _USERINFO.sub(rf"\1{MASK}@", url)
        return self.mask_target(url, known, depth)


def _values_may_hold_targets(query: dict[str, Any]) -> bool:
    """Whether a value of Kong's query object (a string, a list of them for a repeated name, true for a name
    without a value) may be a target: a `?`, `#`, `;`, an encoded one, or a URL with userinfo; or may hold names
    (an object, which Kong never writes, or a `{` in a text: the longer way masks the same). Looked for in the
    object's JSON, one C call for all its values whatever their types (a name holding one of these only takes
    the callers the longer way, which masks the same)."""
    try:
        data = orjson.dumps(query)
    except orjson.JSONEncodeError:  # nested past what orjson writes (254 levels): each value looked at
        return True
    # As text: bytes' `in` tries its operand as an int first, raising and clearing a TypeError each time (~2 k
    # instructions), and one regular expression for all of it scans at every position (~13 k).
    text = data.decode()
    return (
        "?" in text or "#" in text or ";" in text or text.find("{", 1) > 0  # an object inside: its names looked at
        or "eyJ" in text  # a JSON Web Token as a value
        or ("%" in text and _ENCODED_TARGET.search(text) is not None) or ("@" in text and "://" in text)
    )


def _may_hold_target(text: str) -> bool:
    """Whether `text` may hold a target whose parameters its names do not show: encoded (`%3F`, `%23`, `%3A%2F%2F`)
    or a URL with userinfo. (A literal `?` or `#` is the callers' own test.)"""
    return ("%" in text and _ENCODED_TARGET.search(text) is not None) or ("@" in text and "://" in text)
