"""Money in integer nano-CNY (1e-9 CNY), and its two outward forms.

Redis only ever sees integers. Python callers get :class:`~decimal.Decimal`; JSON gets a plain
number with no float noise. ``float(Decimal("2.35"))`` is the double nearest 2.35, which
``json.dumps`` prints as ``2.35`` (shortest repr), so floats are made only at the JSON edge,
from an exact Decimal.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANO_PER_CNY = 1_000_000_000
_NANO = Decimal(NANO_PER_CNY)


def nano_to_decimal(nano: int) -> Decimal:
    """Exact CNY amount of ``nano`` nano-CNY, normalised (``2350000000`` -> ``Decimal('2.35')``)."""
    value = Decimal(nano) / _NANO
    # normalize() would give exponents like 5E+1; quantize to an integer when whole.
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def nano_to_json(nano: int) -> float:
    """A float CNY amount whose repr is the exact decimal (2.35, 5.0), as the seed's JSON has it.

    The repr is exact whenever the amount has at most 15 significant digits (any amount below
    1,000,000 CNY at full nano precision, or any amount in whole fen); past that, the nearest
    double. The exact integer is always available in Redis and as ``Decimal`` in Python.
    """
    return float(nano_to_decimal(nano))


def cny_to_nano(amount: object, *, what: str = "amount") -> int:
    """Parse a CNY amount (Decimal, int, str, or float via its repr) into exact nano-CNY.

    Raises ``ValueError`` when the amount is negative, not finite, or finer than 1 nano-CNY.
    """
    if isinstance(amount, bool):
        raise ValueError(f"{what} must be a number of CNY, not a bool")
    try:
        if isinstance(amount, float):
            value = Decimal(repr(amount))
        elif isinstance(amount, (int, Decimal)):
            value = Decimal(amount)
        elif isinstance(amount, str):
            value = Decimal(amount.strip())
        else:
            raise ValueError(f"{what} must be a number of CNY, got {type(amount).__name__}")
    except InvalidOperation:
        raise ValueError(f"{what} must be a number of CNY, got {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, got {amount!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {amount!r}")
    nano = value * _NANO
    if nano != nano.to_integral_value():
        raise ValueError(f"{what} {amount!r} is finer than 1 nano-CNY (1e-9 CNY)")
    return int(nano)
