"""ISO-8601 text read in SQL exactly as Python's datetime.fromisoformat reads it, or not at all."""

from __future__ import annotations

# ISO-8601 text that Python's datetime.fromisoformat reads field by field as this does;
# other text either fails in Python too (an error) or needs Python to tell (unknown).
ISO = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)


# The shapes of that text with digits as 9, "T" as a space, "," as "." and "+" as "-":
# checking them with translate() is cheaper than a regular expression in PostgreSQL.
ISO_SHAPES = ("9999-99-99",) + tuple(
    time + zone
    for time in ["9999-99-99 99:99", "9999-99-99 99:99:99"]
    + ["9999-99-99 99:99:99." + "9" * k for k in range(1, 7)]
    for zone in ("", "Z", "-99:99")
)
NOT_A_DATE = "'-infinity'::timestamptz"  # fromisoformat raises
MAYBE_A_DATE = "'infinity'::timestamptz"  # only Python can tell


def iso_moment_sql(text: str) -> str:
    """SQL timestamptz of ISO text, -infinity where Python raises, infinity where unsure.

    Valid text in the common forms is cast (naive text is UTC, as the service fixes now's
    zone to UTC); anything else is classified: definitely not a date for Python (an
    error), or a form only Python can tell (unknown).
    """
    s = text

    def field(start: int, length: int) -> str:
        return f"substr({s}, {start}, {length})::int"

    def when(guard: str, condition: str) -> str:
        return f"(CASE WHEN {guard} THEN {condition} ELSE FALSE END)"

    shapes = ", ".join(f"'{shape}'" for shape in ISO_SHAPES)
    day = field(9, 2)
    last_day = f"extract(day FROM make_date({field(1, 4)}, {field(6, 2)}, 1) + interval '1 month - 1 day')::int"
    has_time = f"length({s}) > 10"
    has_seconds = f"(length({s}) > 18 AND substr({s}, 17, 1) = ':')"
    has_offset = f"(length({s}) > 16 AND substr({s}, length({s}) - 5, 1) IN ('+', '-'))"
    castable = (
        f"(CASE WHEN translate({s}, '0123456789T,+', '9999999999 .-') NOT IN ({shapes}) THEN FALSE"
        f" WHEN left({s}, 4) IN ('0000', '0001', '9999') THEN FALSE"
        f" WHEN {field(6, 2)} NOT BETWEEN 1 AND 12 OR {day} = 0 THEN FALSE"
        f" WHEN {day} > 28 AND {day} > {last_day} THEN FALSE"
        f" WHEN {when(has_time, f'{field(12, 2)} > 23 OR {field(15, 2)} > 59')} THEN FALSE"
        f" WHEN {when(has_seconds, f'{field(18, 2)} > 59')} THEN FALSE"
        f" WHEN {when(has_offset, f'substr({s}, length({s}) - 4, 2)::int > 15 OR right({s}, 2)::int > 59')}"
        f" THEN FALSE ELSE TRUE END)"
    )
    cast = (
        f"(CASE WHEN length({s}) = 10 THEN {s} || ' 00:00+00:00'"
        f" WHEN right({s}, 1) = 'Z' OR {has_offset} THEN replace({s}, ',', '.')"
        f" ELSE replace({s}, ',', '.') || '+00:00' END)::timestamptz"
    )
    return (
        f"(CASE WHEN {castable} THEN {cast}"
        f" WHEN NOT ({s} ~ '{ISO}') THEN (CASE WHEN ({s}) = '' OR ({s}) ~ '^[!-/:-~]'"
        f" THEN {NOT_A_DATE} ELSE {MAYBE_A_DATE} END)"
        f" WHEN {field(1, 4)} = 0 THEN {NOT_A_DATE}"
        f" WHEN {field(1, 4)} IN (1, 9999) THEN {MAYBE_A_DATE}"
        f" WHEN {field(6, 2)} NOT BETWEEN 1 AND 12 THEN {NOT_A_DATE}"
        f" WHEN {day} NOT BETWEEN 1 AND {last_day} THEN {NOT_A_DATE}"
        f" WHEN {when(has_time, f'{field(12, 2)} > 23 OR {field(15, 2)} > 59')} THEN {NOT_A_DATE}"
        f" WHEN {when(has_seconds, f'{field(18, 2)} > 59')} THEN {NOT_A_DATE}"
        f" ELSE {MAYBE_A_DATE} END)"  # an offset Python reads and PostgreSQL does not (16:00 to 23:59, :60)
    )
