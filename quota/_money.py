"""Money in integer nano-CNY (1e-9 CNY), and its two outward forms.

Redis only ever sees integers. Python callers get :class:`~decimal.Decimal`; JSON gets a plain
number with no float noise. ``float(Decimal("2.35"))`` is the double nearest 2.35, which
``json.dumps`` prints as ``2.35`` (shortest repr), so floats are made only at the JSON edge,
from an exact Decimal.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from ._errors import InvalidInput

NANO_PER_CNY = 1_000_000_000
NANO_DIGITS = 9
_NANO = Decimal(NANO_PER_CNY)
# The largest amount any caller may pass: 10^9 CNY is 10^18 nano-CNY, just inside the 64-bit
# integers Redis counts in (9.2e18). Callers keep their own, lower limits (a credit is below
# 10^8 CNY, a price at most 10 CNY per 1k tokens).
MAX_CNY = 10**9
_MAX_CNY_DIGITS = 10  # MAX_CNY has 10 digits


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

    Raises :class:`~quota._errors.InvalidInput` (a ``ValueError``) when the amount is negative, not
    finite, finer than 1 nano-CNY, or :data:`MAX_CNY` or more.

    Why no ``Decimal`` arithmetic: multiplying by 10^9 runs in the default context, so
    ``"1e999999999"`` raised ``decimal.Overflow`` (an ``ArithmeticError``, a 500 in the API),
    ``"1e-999999999"`` underflowed to a silent 0, and an amount with more than 28 digits was
    rounded to fit (``"1.00000000000000000000000000001"`` became exactly 1 CNY). The digits and
    the exponent are read instead, and the size is checked before any integer is built from them.
    """
    if isinstance(amount, bool):
        raise InvalidInput(f"{what} must be a number of CNY, not a bool")
    try:
        if isinstance(amount, float):
            value = Decimal(repr(amount))
        elif isinstance(amount, (int, Decimal)):
            value = Decimal(amount)
        elif isinstance(amount, str):
            value = Decimal(amount.strip())
        else:
            raise InvalidInput(f"{what} must be a number of CNY, got {type(amount).__name__}")
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a number of CNY, got {_shown(amount)}") from None
    if not value.is_finite():
        raise InvalidInput(f"{what} must be finite, got {_shown(amount)}")
    sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:
        return 0  # any zero, "-0" and "0e-999999999" included
    if sign:
        raise InvalidInput(f"{what} must not be negative, got {_shown(amount)}")
    if len(digits) + exponent > _MAX_CNY_DIGITS:  # more than 10 digits before the point: >= 10 * MAX_CNY
        raise InvalidInput(f"{what} {_shown(amount)} is too large: it must be below {MAX_CNY:,} CNY")
    significant = digits.rstrip("0")
    scale = exponent + (len(digits) - len(significant)) + NANO_DIGITS  # nano = significant * 10**scale
    if scale < 0:
        raise InvalidInput(f"{what} {_shown(amount)} is finer than 1 nano-CNY (1e-9 CNY)")
    nano: int = int(significant) * 10**scale  # at most 18 digits: bounded above (scale >= 0: an int)
    if nano >= MAX_CNY * NANO_PER_CNY:
        raise InvalidInput(f"{what} {_shown(amount)} is too large: it must be below {MAX_CNY:,} CNY")
    return nano


def _shown(amount: object) -> str:
    """The amount for a message, cut short: a 1 MB string of digits is not echoed back whole."""
    text = repr(amount)
    return text if len(text) <= 40 else text[:37] + "..."
