"""Regular expressions in mapping rules: compiled once at save time, refused when they could backtrack badly.

Python's `re` is a backtracking engine without a timeout, and the values it runs on come from the upstream
IdP (sometimes typed by the user). So a pattern is accepted only if all of this holds:

- at most `MAX_PATTERN_CHARS` characters, and it compiles;
- no backreferences (`\\1`, `(?P=name)`) and no conditionals (`(?(1)...)`): they make matching non-regular;
- no verbose flag `(?x)` and no nested-set syntax inside `[...]` (`[[`, `--`, `&&`, `~~`, `||`);
- no repeated group that itself contains a quantifier or an alternation: `(a+)+`, `(\\w*)*`, `(a|aa)*`,
  `(x{1,5}){2,}` are refused (the classic exponential cases);
- a backtracking estimate within budget: every `*`, `+`, `{m,}` counts as a factor of `MAX_MATCH_CHARS`,
  `{m,n}` as (n - m + 1), `?` as 2; an unanchored pattern (not starting with `^` / `\\A`, or with a top-level
  `|`) is tried at every position, one more factor of `MAX_MATCH_CHARS`. The product must stay within
  2**`BUDGET_BITS` -- in practice: at most two open-ended quantifiers in a `^`-anchored pattern, one in an
  unanchored one, plus a few `?`.

At login time values longer than `MAX_MATCH_CHARS` are never given to a regex (see rules.py), which is what
makes the estimate an upper bound: the worst accepted pattern costs tens of milliseconds on a 4 KiB value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_PATTERN_CHARS = 256
MAX_MATCH_CHARS = 4096
BUDGET_BITS = 26.0

_LENGTH_BITS = math.log2(MAX_MATCH_CHARS)
_BRACE = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_FLAGS = re.compile(r"[aiLmsux]*(?:-[imsx]+)?")
_SET_OPERATIONS = ("[", "--", "&&", "~~", "||")
_FLAGS_PREFIX = re.compile(r"(?:\(\?[aiLmsu]+\))*")


class PatternRefused(ValueError):
    """A pattern that does not compile or is refused as unsafe; the text is a sentence for the admin."""


@dataclass
class _Group:
    has_quantifier: bool = False
    has_alternation: bool = False


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Return the compiled pattern, or raise PatternRefused with the reason."""
    if not pattern:
        raise PatternRefused("the pattern is empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternRefused(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    reason = _unsafe_reason(pattern)
    if reason is not None:
        raise PatternRefused(reason)
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except (re.error, OverflowError, RecursionError) as exc:
        raise PatternRefused(f"the pattern is not a valid regular expression ({exc})") from None


def _quantifier_at(p: str, i: int) -> tuple[int, float, bool]:
    """A quantifier at p[i]: (index after it, cost in bits, whether it repeats); else (i, 0, False)."""
    n = len(p)
    if i >= n:
        return i, 0.0, False
    c = p[i]
    if c in "*+":
        end, bits, repeats = i + 1, _LENGTH_BITS, True
    elif c == "?":
        end, bits, repeats = i + 1, 1.0, False
    elif c == "{":
        m = _BRACE.match(p, i)
        if m is None or (m.group(1) == "" and m.group(2) is None):
            return i, 0.0, False  # a literal brace
        low = int(m.group(1) or "0")
        if m.group(2) is None:
            high: int | None = low
        else:
            high = int(m.group(3)) if m.group(3) else None
        end = m.end()
        if high is None:
            bits, repeats = _LENGTH_BITS, True
        else:
            span = max(high - low, 0) + 1
            bits, repeats = math.log2(min(span, MAX_MATCH_CHARS)), high > 1
    else:
        return i, 0.0, False
    if end < n and p[end] in "?+":  # lazy or possessive modifier
        end += 1
    return end, bits, repeats


def _skip_class(p: str, i: int) -> tuple[int, str | None]:
    """p[i] is '['; return the index after the matching ']' (or len(p)) and a refusal reason, if any."""
    n = len(p)
    j = i + 1
    if j < n and p[j] == "^":
        j += 1
    if j < n and p[j] == "]":
        j += 1
    while j < n and p[j] != "]":
        if p[j] == "\\":
            j += 2
            continue
        for op in _SET_OPERATIONS:
            if p.startswith(op, j):
                return n, f"the character class uses {op!r}, which is reserved for nested sets; escape it"
        j += 1
    return j + 1, None


def _unsafe_reason(p: str) -> str | None:
    n = len(p)
    stack = [_Group()]
    top_alternation = False
    bits = 0.0
    i = 0
    lead = _FLAGS_PREFIX.match(p)
    start_after_flags = lead.end() if lead else 0
    while i < n:
        c = p[i]
        if c == "\\":
            if i + 1 < n and p[i + 1] in "123456789":
                return "backreferences (\\1 ...) are not allowed"
            i += 2
        elif c == "[":
            i, reason = _skip_class(p, i)
            if reason is not None:
                return reason
        elif c == "(":
            if p.startswith("(?", i):
                rest = p[i + 2 :]
                if rest.startswith("P<"):
                    close = p.find(">", i)
                    name = p[i + 4 : close] if close > 0 else ""
                    if not _GROUP_NAME.fullmatch(name):
                        return "group names must be short ASCII identifiers"
                    i = close + 1
                elif rest.startswith("P="):
                    return "backreferences ((?P=name)) are not allowed"
                elif rest.startswith("("):
                    return "conditional groups are not allowed"
                elif rest.startswith("#"):
                    close = p.find(")", i)
                    if close < 0:
                        return "the comment group is not closed"
                    i = close + 1
                    continue
                elif rest[:1] in ("=", "!", ">", ":"):
                    i += 3
                elif rest.startswith(("<=", "<!")):
                    i += 4
                else:
                    flags = _FLAGS.match(rest)
                    letters = flags.group() if flags else ""
                    if "x" in letters:
                        return "the verbose flag (?x) is not allowed"
                    after = i + 2 + len(letters)
                    if p[after : after + 1] == ")":
                        i = after + 1
                        continue
                    if p[after : after + 1] != ":":
                        return "the group syntax is not supported"
                    i = after + 1
            else:
                i += 1
            stack.append(_Group())
        elif c == ")":
            if len(stack) == 1:
                return None  # unbalanced: re.compile says so, in its own words
            group = stack.pop()
            end, cost, repeats = _quantifier_at(p, i + 1)
            if repeats and (group.has_quantifier or group.has_alternation):
                return (
                    "a repeated group contains a quantifier or an alternation (like (a+)+ or (a|b)*), "
                    "which can backtrack exponentially"
                )
            parent = stack[-1]
            parent.has_quantifier |= group.has_quantifier or end > i + 1
            parent.has_alternation |= group.has_alternation
            bits += cost
            i = end
        elif c == "|":
            stack[-1].has_alternation = True
            if len(stack) == 1:
                top_alternation = True
            i += 1
        else:
            end, cost, _ = _quantifier_at(p, i)
            if end > i:
                stack[-1].has_quantifier = True
                bits += cost
                i = end
            else:
                i += 1
    if len(stack) != 1:
        return None  # unclosed: re.compile says so, in its own words
    anchored = p.startswith(("^", "\\A"), start_after_flags) and not top_alternation
    if not anchored:
        bits += _LENGTH_BITS
    if bits > BUDGET_BITS:
        return (
            "the pattern could backtrack too much on long values: use at most two open-ended quantifiers "
            "(*, +, {n,}) in a pattern anchored with ^, or one in an unanchored pattern"
        )
    return None

