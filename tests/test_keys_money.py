import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from quota import InvalidInput
from quota._keys import KeySchema, add_months, month_of, next_month_start, validate_user
from quota._money import cny_to_nano, nano_to_decimal, nano_to_json
from quota._prices import PriceTable


@pytest.mark.parametrize("user", ["a", "alice", "A.b_c-d@e+f", "u" * 128, "42"])
def test_valid_user_ids(user):
    assert validate_user(user) == user


@pytest.mark.parametrize(
    "user", ["", "u" * 129, "a{b", "a}b", "a:b", "a b", "a\nb", "a\tb", "用户", "a*", None, 42, b"alice", ["a"]]
)
def test_invalid_user_ids_never_reach_a_key(user):
    with pytest.raises(InvalidInput):
        validate_user(user)


def test_key_schema_is_the_public_contract():
    keys = KeySchema("quota")
    assert keys.month_key("alice", "2026-01") == "quota:{alice}:2026-01"
    assert keys.request_key("alice", "r1") == "quota:{alice}:req:r1"
    assert keys.parse_month_key("quota:{alice}:2026-01") == ("alice", "2026-01")
    assert keys.parse_month_key("quota:{alice}:req:r1") is None
    assert keys.parse_month_key("other:{alice}:2026-01") is None
    assert KeySchema("billing").month_key("bob", "2025-12") == "billing:{bob}:2025-12"
    with pytest.raises(InvalidInput):
        KeySchema("bad:prefix")


def test_utc_month_boundaries():
    assert month_of(datetime(2026, 1, 31, 23, 59, 59, 999000, tzinfo=UTC)) == "2026-01"
    assert month_of(datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC)) == "2026-02"
    # 2026-02-01 07:00 in UTC+8 is still January in UTC
    assert month_of(datetime(2026, 2, 1, 7, 0, tzinfo=timezone(timedelta(hours=8)))) == "2026-01"
    assert add_months("2026-01", -1) == "2025-12" and add_months("2025-12", 1) == "2026-01"
    assert next_month_start("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="aware"):
        month_of(datetime(2026, 1, 1))


def test_money_is_exact_and_json_has_no_float_noise():
    assert nano_to_decimal(2_350_000_000) == Decimal("2.35")
    assert json.dumps(nano_to_json(2_350_000_000)) == "2.35"
    assert json.dumps(nano_to_json(5_000_000_000)) == "5.0"
    assert json.dumps(nano_to_json(100_000_000 + 200_000_000)) == "0.3"  # 0.1 + 0.2, exactly
    assert cny_to_nano("0.1") + cny_to_nano(0.2) == cny_to_nano("0.3")
    for bad in ("-1", "nan", "inf", "1e-10", True, None, "x"):
        with pytest.raises(ValueError):
            cny_to_nano(bad)


def test_a_million_records_sum_to_the_exact_decimal():
    """One million records at the default prices: the integer sum is the exact decimal sum,
    where summing floats drifts."""
    rng = random.Random(1)
    price = PriceTable().lookup("system_deepseek")
    total_nano = 0
    total_float = 0.0
    exact = Decimal(0)
    for _ in range(1_000_000):
        tin, tout = rng.randrange(0, 5000), rng.randrange(0, 2000)
        total_nano += price.cost_nano(tin, tout)
        total_float += tin / 1000 * 0.001 + tout / 1000 * 0.002
        exact += Decimal(tin) / 1000 * Decimal("0.001") + Decimal(tout) / 1000 * Decimal("0.002")
    assert nano_to_decimal(total_nano) == exact
    assert Decimal(repr(total_float)) != exact  # what the seed's float design would have stored


@pytest.mark.parametrize(
    "amount, message",
    [
        ("1e999999999", "too large"),
        ("1E+999999999", "too large"),
        ("9" * 5000, "too large"),
        (2**70, "too large"),
        (1e30, "too large"),
        ("1e9", "too large"),
        ("1e-999999999", "finer than 1 nano"),
        ("1.00000000000000000000000000001", "finer than 1 nano"),
        ("0." + "0" * 5000 + "1", "finer than 1 nano"),
        ("-1e-999999999", "negative"),
    ],
)
def test_extreme_exponents_and_long_digits_are_invalid_input_not_overflow_or_rounding(amount, message):
    """Decimal arithmetic in the default context overflowed (a 500), underflowed to 0, or rounded
    past 28 digits; every caller (credit, call price, price file) goes through cny_to_nano."""
    with pytest.raises(InvalidInput, match=message) as err:
        cny_to_nano(amount, what="credit")
    assert len(str(err.value)) < 200  # a 5000-digit amount is not echoed back whole


@pytest.mark.parametrize(
    "amount, nano",
    [
        ("0e-999999999", 0),
        ("-0", 0),
        ("1E+3", 10**12),
        ("100E-11", 1),
        ("1.000000000000000", 10**9),
        ("999999999.999999999", 10**18 - 1),
        (" 12.5e-1 ", 1_250_000_000),
        (Decimal("0.000000001"), 1),
    ],
)
def test_exact_amounts_at_the_edges(amount, nano):
    assert cny_to_nano(amount) == nano
