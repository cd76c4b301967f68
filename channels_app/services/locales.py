"""Locales as BCP 47 language tags: the one reading of a locale for every place a template's
language variant is chosen (journey sends, previews, test sends, the messages API) and for the
variants' own tags.

Tags compare as BCP 47 says: ignoring case, and an SDK's underscore (`pt_BR`, Java's
`Locale.toString()`; POSIX `pt_BR.UTF-8`) is a hyphen. A customer's locale is looked up as
RFC 4647 "lookup" does: the whole tag, then without its last subtag, and so on
(`zh-Hant-TW` -> `zh-Hant` -> `zh`; `pt-BR` -> `pt`); nothing found, or a locale that is no
language tag (`garbage!!`, empty): the template itself.
"""

from __future__ import annotations

import functools
import re

from journeys.errors import JourneyError

# language (2-8 letters), then subtags of 1-8 letters or digits; or a private-use tag (x-...)
_TAG = re.compile(r"(?:[a-z]{2,8}|x)(?:-[a-z0-9]{1,8})*", re.ASCII | re.IGNORECASE)
MAX_TAG_LENGTH = 35  # RFC 5646 4.4.1: what an implementation should at least hold
LOCALE_HELP = ("a language tag: the language, then optionally script and region, separated by hyphens, "
               "e.g. fr, pt-BR, zh-Hant-TW")


@functools.lru_cache(maxsize=4096)
def locale_canonical(value: str) -> str:
    """`value` as a canonical language tag (`pt_br` -> `pt-BR`, `FR` -> `fr`, `zh-hant-tw` ->
    `zh-Hant-TW`), or "" when it is none (`zz zz!!`, empty). An encoding or modifier after a POSIX
    locale (`de_DE.UTF-8@euro`) is dropped."""
    tag = re.split(r"[.@]", (value or "").strip(), maxsplit=1)[0].replace("_", "-")
    subtags = tag.split("-")
    if not _TAG.fullmatch(tag) or len(subtags[-1]) == 1 or (subtags[0].lower() == "x" and len(subtags) < 2):
        return ""
    out, extension = [subtags[0].lower()], subtags[0].lower() == "x"
    for subtag in subtags[1:]:
        extension = extension or len(subtag) == 1  # after a singleton (-u-, -x-) everything is lower case
        if not extension and len(subtag) == 4 and subtag.isalpha():
            out.append(subtag.title())  # script: Hant
        elif not extension and (len(subtag) == 2 and subtag.isalpha() or len(subtag) == 3 and subtag.isdigit()):
            out.append(subtag.upper())  # region: BR, 419
        else:
            out.append(subtag.lower())
    return "-".join(out)


@functools.lru_cache(maxsize=4096)
def locale_fallbacks(value: str) -> tuple[str, ...]:
    """The tags a customer's locale `value` looks for, most specific first, lower case (compare
    with `locale_key`): `zh_Hant_TW` -> (zh-hant-tw, zh-hant, zh); nothing for a locale that is
    no language tag."""
    subtags = locale_canonical(value).lower().split("-")
    wanted = []
    while subtags and subtags[0]:
        wanted.append("-".join(subtags))
        subtags.pop()
        if subtags and len(subtags[-1]) == 1:  # never end on a singleton (en-x-twain -> en)
            subtags.pop()
    return tuple(wanted)


def locale_key(value: str) -> str:
    """What a variant's tag is matched by: its canonical form in lower case (a tag saved before
    tags were checked, and that is none, as it is in lower case)."""
    return (locale_canonical(value) or (value or "").strip()).lower()


def locale_clean(value: str, *, field: str = "locale") -> str:
    """A language tag typed by a person or sent to the API, canonical (`pt_BR` -> `pt-BR`); ""
    for empty. Raises JourneyError(field) saying what to write when it is no language tag."""
    if not (value or "").strip():
        return ""
    tag = locale_canonical(value)
    if not tag:
        raise JourneyError(f"{value.strip()[:40]!r} is not a language tag; write {LOCALE_HELP}", field=field)
    if len(tag) > MAX_TAG_LENGTH:
        raise JourneyError(f"is longer than a language tag needs (at most {MAX_TAG_LENGTH} characters); write "
                           f"{LOCALE_HELP}", field=field)
    return tag
