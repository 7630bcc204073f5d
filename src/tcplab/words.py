"""Counts in words: ``plural(1, "echo")`` is "1 echo", ``plural(1000, "echo")`` "1,000 echoes".

Outside the layers, like errors.py: experiments write their fact sentences with it
and report/ its tables, and it imports nothing.
"""

from __future__ import annotations

#: Endings that take "es" in English (echo, process, address, box, match, push).
_ES = ("s", "x", "z", "ch", "sh", "o")


def plural_of(noun: str) -> str:
    """The plural of a lower-case English noun that follows the usual rules."""
    if noun.endswith(_ES):
        return noun + "es"
    if len(noun) > 1 and noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def plural(n: int | float, noun: str, many: str | None = None) -> str:
    """``n`` and the noun, singular for exactly 1: "1 thread", "0 threads", "10,001 threads".

    ``many`` gives the plural where the rule does not ("fd" -> "fds" is the rule; "echo
    server" -> "echo servers" too, since only the last word changes). Whole floats print
    as integers; other floats as they come (round them first).
    """
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    text = f"{n:,}"
    return f"{text} {noun if n == 1 else (many or plural_of(noun))}"


def duration_us(us: float, ms_digits: int = 1) -> str:
    """Microseconds as a person reads them: "365.0 ms" (``ms_digits`` decimals), "10.6 s"."""
    return f"{us / 1e6:,.1f} s" if us >= 1e6 else f"{us / 1000:,.{ms_digits}f} ms"
