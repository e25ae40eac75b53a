"""Byte sizes, the one module for them: Kubernetes quantities (the schema pattern, parsing to
bytes, exact formatting), sizes as people type them on the command line, and sizes written for
people in messages and logs."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
}


def parse_quantity(value: str | int | float) -> int:
    """A quantity in whole units (bytes for sizes), rounded up as Kubernetes does for Value()."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, (int, float)):
        return int(Decimal(str(value)).to_integral_value(rounding="ROUND_CEILING"))
    text = value.strip()
    if not _QUANTITY.match(text):
        raise ValueError(f"not a quantity: {value!r}")
    if text.endswith("i"):
        number, suffix = text[:-2], text[-2:]
    elif text[-1] in "numkMGTPE":
        number, suffix = text[:-1], text[-1]
    else:  # plain number or exponent form such as 1e9
        number, suffix = text, ""
    try:
        if suffix in _BINARY:
            amount = Decimal(number) * _BINARY[suffix]
        else:
            amount = Decimal(number) * _DECIMAL[suffix]
    except InvalidOperation as exc:
        raise ValueError(f"not a quantity: {value!r}") from exc
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))


def quantity_or_none(value: object) -> int | None:
    """`parse_quantity` for a value read from an object: None when absent or malformed."""
    if value is None:
        return None
    if not isinstance(value, (str, int, float)):
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def format_bytes(count: int) -> str:
    """A byte count as the shortest exact binary quantity (`10Gi`), else plain bytes."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if count and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)


def human_bytes(count: float) -> str:
    """A byte count or rate for people: `512 B`, `1.5 GiB` (rounded, unlike `format_bytes`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def approx_quantity(count: int) -> str:
    """A size for messages beside Kubernetes quantities, in the largest binary unit it reaches:
    `10Gi`, `1.50Gi` (two decimals when not exact), `512 bytes`."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        scale = _BINARY[unit]
        if count >= scale:
            return f"{count // scale}{unit}" if count % scale == 0 else f"{count / scale:.2f}{unit}"
    return f"{count} bytes"


_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from a size as people type it: "4096", "64Mi", "64MiB", "1.5G", "10MB", "10MB/s"
    (k/M/G/T are powers of 1000, case-insensitive). Wider than `parse_quantity`, for flags."""
    value = text.strip().lower().removesuffix("b").removesuffix("/s")
    number = value.rstrip("kmgti")
    unit = value[len(number):]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"not a size: {text!r}")
    return int(float(number) * _SIZE_UNITS[unit])
