"""Issue 12, parts 1 and 2: cache-aware prices (cache hits and cache writes priced at their own
rates, read from each provider's usage shape) and dated prices (a call priced by the entry in
force at its instant, a spooled record keeping its own), over fakeredis, a real Redis and the
real cluster; the price file's validation; ``quota prices``; the API."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import PromptTokensDetails

from quota import InvalidInput, Meter
from quota._config import Settings
from quota._core import MeterCore
from quota._errors import ConfigError, RequestConflict
from quota._keys import FIELD_ORIGIN
from quota._prices import DEFAULT_SYSTEM_MODELS, ModelPrice, PriceTable
from quota._spool import Spool, SpoolEntry
from quota._usage import StreamTally, Usage, usage_from
from quota.cli import main
from quota.testing import free_ports

from .history_support import history_url  # noqa: F401 - a fixture

SYS, CUS = "system_deepseek", "custom_claude"
CHANGE = datetime(2026, 1, 16, tzinfo=UTC)  # mid-month, the test clock starts on 2026-01-15 12:00

# Nano-CNY per token: input 1000, output 2000, cached 100, cache write 1250; from CHANGE, input 500,
# cached 50 (output and the cache write price follow the input price, 500, when not given).
DATED = {
    "system": {
        SYS: [
            {
                "name": "DeepSeek",
                "cost_per_1k_input": "0.001",
                "cost_per_1k_output": "0.002",
                "cost_per_1k_cached_input": "0.0001",
                "cost_per_1k_cache_write": "0.00125",
            },
            {
                "effective_from": "2026-01-16T00:00:00Z",
                "cost_per_1k_input": "0.0005",
                "cost_per_1k_output": "0.002",
                "cost_per_1k_cached_input": "0.00005",
            },
        ]
    },
    "custom": {
        CUS: {
            "cost_per_1k_input": "0.003",
            "cost_per_1k_output": "0.015",
            "cost_per_1k_cached_input": "0.0003",
            "cost_per_1k_cache_write": "0.00375",
        }
    },
}

PRICE_FILE = """
[[system.system_deepseek]]
name = "DeepSeek"
cost_per_1k_input = "0.001"
cost_per_1k_output = "0.002"
cost_per_1k_cached_input = "0.0001"
cost_per_1k_cache_write = "0.00125"

[[system.system_deepseek]]
effective_from = 2026-01-16T00:00:00Z
cost_per_1k_input = "0.0005"
cost_per_1k_output = "0.002"
cost_per_1k_cached_input = "0.00005"

[custom.custom_claude]
cost_per_1k_input = "0.003"
cost_per_1k_output = "0.015"
cost_per_1k_cached_input = "0.0003"
cost_per_1k_cache_write = "0.00375"
"""


def dated_table() -> PriceTable:
    return PriceTable.from_mapping(DATED)


# --- the price model (pure) ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_the_default_table_prices_every_call_exactly_as_before(tokens_in, tokens_out):
    """No cache prices given: the cached and cache-write parts cost the input price, so every
    figure is what the seed's formula (in * p_in + out * p_out) gave, whatever the split."""
    price = PriceTable().lookup(SYS)
    old = tokens_in * 1000 + tokens_out * 2000  # the seed's 0.001 / 0.002 CNY per 1k, in nano per token
    assert price.cost_nano(tokens_in, tokens_out) == old
    cached = tokens_in // 3
    assert price.cost_nano(tokens_in, tokens_out, cached, tokens_in - cached) == old
    assert price.as_config()["cost_per_1k_cached_input"] == Decimal("0.001") == price.as_config()["cost_per_1k_input"]
    assert DEFAULT_SYSTEM_MODELS[SYS].keys() == {"name", "cost_per_1k_input", "cost_per_1k_output"}


def test_cache_parts_are_priced_at_their_own_rates():
    before = dated_table().lookup(SYS, CHANGE - timedelta(microseconds=1))
    # 10,000 input of which 8,000 cache hits and 1,000 cache writes, 500 output
    assert before.cost_nano(10_000, 500, 8_000, 1_000) == 1_000 * 1000 + 8_000 * 100 + 1_000 * 1250 + 500 * 2000
    after = dated_table().lookup(SYS, CHANGE)
    assert (after.input_nano_per_token, after.cached_input_nano_per_token, after.cache_write_nano_per_token) == (
        500,
        50,
        500,
    )
    assert after.name == "DeepSeek"  # an entry without a name keeps the previous entry's


@settings(max_examples=200, deadline=None)
@given(
    prices=st.tuples(*(st.integers(0, 10**7) for _ in range(4))),
    records=st.lists(
        st.tuples(st.integers(0, 10**9), st.integers(0, 10**9), st.floats(0, 1), st.floats(0, 1)),
        min_size=1,
        max_size=200,
    ),
)
def test_many_records_sum_to_the_exact_decimal(prices, records):
    """Whatever the prices and the split, the sum of the records' costs is the exact decimal CNY
    that Decimal arithmetic on the per-1k prices gives (200 examples x up to 200 records)."""
    p_in, p_out, p_cached, p_write = prices
    price = ModelPrice("custom_x", "x", p_in, p_out, False, p_cached, p_write)
    per_1k = [Decimal(p) * 1000 / 10**9 for p in prices]  # CNY per 1k tokens, as a price file gives them
    total_nano, total_cny = 0, Decimal(0)
    for tokens_in, tokens_out, f_cached, f_write in records:
        cached = int(tokens_in * f_cached)
        write = int((tokens_in - cached) * f_write)
        total_nano += price.cost_nano(tokens_in, tokens_out, cached, write)
        fresh = tokens_in - cached - write
        total_cny += (fresh * per_1k[0] + tokens_out * per_1k[1] + cached * per_1k[2] + write * per_1k[3]) / 1000
    assert Decimal(total_nano) / 10**9 == total_cny


def test_a_million_records_sum_to_the_exact_decimal():
    """One million priced records (the core's own pricing, not a formula of the test's), summed
    in integer nano-CNY, equal the Decimal sum to the last digit; under a second."""
    core = MeterCore(Settings(prices=dated_table()), clock=lambda: CHANGE - timedelta(hours=1))
    price = core.price_for(SYS)
    rng = random.Random(12)
    total_nano, cached_sum, write_sum, in_sum, out_sum = 0, 0, 0, 0, 0
    for _ in range(1_000_000):
        tokens_in, cached, write, tokens_out = random_call(rng, 200_000, 8_000)
        total_nano += price.cost_nano(tokens_in, tokens_out, cached, write)
        in_sum, out_sum, cached_sum, write_sum = (
            in_sum + tokens_in,
            out_sum + tokens_out,
            cached_sum + cached,
            write_sum + write,
        )
    assert Decimal(total_nano) / 10**9 == old_entry_cny(in_sum, cached_sum, write_sum, out_sum)


def random_call(rng: random.Random, max_in: int, max_out: int) -> tuple[int, int, int, int]:
    """``(input, cached, cache_write, output)``: the two cache parts within the input."""
    tokens_in = rng.randrange(0, max_in)
    cached = rng.randrange(0, tokens_in + 1)
    return tokens_in, cached, rng.randrange(0, tokens_in - cached + 1), rng.randrange(0, max_out)


def old_entry_cny(tokens_in: int, cached: int, write: int, out: int) -> Decimal:
    """What those tokens cost at the first entry of DATED's system_deepseek, by Decimal arithmetic
    on its per-1k prices (CNY)."""
    fresh = tokens_in - cached - write
    per_1k = fresh * Decimal("0.001") + cached * Decimal("0.0001") + write * Decimal("0.00125") + out * Decimal("0.002")
    return per_1k / 1000


@pytest.mark.parametrize(
    ("cached", "write", "message"),
    [
        (901, 100, "can not be more than"),
        (-1, 0, "cached_input_tokens must be from 0"),
        (True, 0, "cached_input_tokens must be an int"),
        (0, 1.5, "cache_write_tokens must be an int"),
    ],
)
def test_bad_cache_counts_are_invalid_input(cached, write, message):
    core = MeterCore(Settings(prices=dated_table()))
    with pytest.raises(InvalidInput, match=message):
        core.record("u", SYS, 1000, 1, cached_input_tokens=cached, cache_write_tokens=write)


# --- provider usage shapes -------------------------------------------------------------------------


def test_openai_cached_tokens_from_the_sdk_object_and_a_whole_response():
    usage = CompletionUsage(
        prompt_tokens=2006,
        completion_tokens=300,
        total_tokens=2306,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1920, audio_tokens=0),
    )
    assert usage_from(usage) == Usage(2006, 300, None, False, 1920, 0)
    response = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-cache",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": usage.model_dump(),
        }
    )
    assert usage_from(response) == Usage(2006, 300, "chatcmpl-cache", False, 1920, 0)
    # details present but without a cached figure (older models): no cache hits
    none = CompletionUsage(prompt_tokens=5, completion_tokens=1, total_tokens=6, prompt_tokens_details=None)
    assert usage_from(none).cached_input_tokens == 0


def test_openai_stream_final_chunk_carries_the_cached_tokens():
    tally = StreamTally()
    tally.feed(
        ChatCompletionChunk.model_validate(
            {
                "id": "chatcmpl-s",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gpt-4o",
                "choices": [],
                "usage": {
                    "prompt_tokens": 1200,
                    "completion_tokens": 40,
                    "total_tokens": 1240,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                },
            }
        )
    )
    assert tally.usage() == Usage(1200, 40, "chatcmpl-s", False, 1024, 0)


def test_deepseek_prompt_cache_hit_tokens():
    # DeepSeek's real usage: prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens
    body = {
        "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 120,
            "total_tokens": 2120,
            "prompt_tokens_details": {"cached_tokens": 1792},
            "prompt_cache_hit_tokens": 1792,
            "prompt_cache_miss_tokens": 208,
        },
    }
    assert usage_from(body) == Usage(2000, 120, "930c60df-bf64-41c9-a88e-3ec75f81e00e", False, 1792, 0)
    del body["usage"]["prompt_tokens_details"]  # the older shape: the hit count alone
    assert usage_from(body).cached_input_tokens == 1792


def test_anthropic_cache_reads_and_writes_are_added_to_the_input():
    # Anthropic's input_tokens leave the cache reads and writes out: the total input adds them.
    message = {
        "id": "msg_01",
        "type": "message",
        "usage": {
            "input_tokens": 50,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 10_000,
            "output_tokens": 503,
        },
    }
    assert usage_from(message) == Usage(12_098, 503, "msg_01", False, 10_000, 2048)
    tally = StreamTally()
    tally.feed(
        {"type": "message_start", "message": {"id": "msg_02", "usage": {**message["usage"], "output_tokens": 1}}}
    )
    tally.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}})
    tally.feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 503}})
    assert tally.usage() == Usage(12_098, 503, "msg_02", False, 10_000, 2048)


def test_a_cached_count_above_the_prompt_is_invalid():
    with pytest.raises(InvalidInput, match="can not be more than"):
        usage_from({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}})


# --- on every backend ------------------------------------------------------------------------------


@pytest.fixture
def priced(backend, make_meter):
    return make_meter(backend, prefix="quota", monthly_credit=5, prices=dated_table())


def test_each_provider_shape_is_priced_and_counted(priced, raw):
    """One call per provider through a turn: cost, per-model fields, stats, all exact."""
    with priced.turn("ann", SYS) as turn:
        openai = turn.record(
            {"prompt_tokens": 2000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 1500}}
        )
        deepseek = turn.record(
            {
                "prompt_tokens": 1000,
                "completion_tokens": 10,
                "prompt_cache_hit_tokens": 900,
                "prompt_cache_miss_tokens": 100,
            }
        )
    anthropic = priced.update_token_usage(
        "ann", CUS, 12_098, 503, cached_input_tokens=10_000, cache_write_tokens=2048, request_id="msg_01"
    )
    assert openai.result.cost_nano == 500 * 1000 + 1500 * 100 + 100 * 2000
    assert deepseek.result.cost_nano == 100 * 1000 + 900 * 100 + 10 * 2000
    assert anthropic.cost_nano == 50 * 3000 + 10_000 * 300 + 2048 * 3750 + 503 * 15_000
    assert (anthropic.cached_input_tokens, anthropic.cache_write_tokens) == (10_000, 2048)
    stats = priced.get_token_stats("ann", exact=True)
    system = stats["models"][SYS]
    assert (system["input_tokens"], system["cached_input_tokens"], system["cache_write_tokens"]) == (3000, 2400, 0)
    assert system["cost"] == Decimal(openai.result.cost_nano + deepseek.result.cost_nano) / 10**9
    assert stats["monthly_used"] == system["cost"]
    custom = stats["models"][CUS]
    assert (custom["cached_input_tokens"], custom["cache_write_tokens"]) == (10_000, 2048)
    fields = raw.hgetall("quota:{ann}:2026-01")
    assert int(fields[b"custom_claude:cache_write"]) == 2048 and int(fields[b"system_deepseek:cached_input"]) == 2400
    assert b"system_deepseek:cache_write" not in fields  # written only when there is some


def test_a_record_without_cache_tokens_writes_what_it_always_did(priced, raw):
    priced.update_token_usage("bob", SYS, 100, 10, request_id="plain")
    fields = {k.decode() for k in raw.hgetall("quota:{bob}:2026-01")} - {FIELD_ORIGIN}  # ops' field, on a late hash
    assert fields == {f"{SYS}:input", f"{SYS}:output", f"{SYS}:cost_nano", f"{SYS}:calls", "system_used_nano"}
    assert raw.get("quota:{bob}:req:plain") == f"{SYS}|100|10|{100 * 1000 + 10 * 2000}|0".encode()  # as before


def test_the_cache_split_is_part_of_a_request_ids_content(priced):
    first = priced.update_token_usage("cat", SYS, 1000, 10, cached_input_tokens=800, request_id="r1")
    again = priced.update_token_usage("cat", SYS, 1000, 10, cached_input_tokens=800, request_id="r1")
    assert again.duplicate and again.monthly_used_nano == first.monthly_used_nano
    with pytest.raises(RequestConflict):
        priced.update_token_usage("cat", SYS, 1000, 10, cached_input_tokens=700, request_id="r1")
    with pytest.raises(RequestConflict):  # the same tokens without a cache split are another record
        priced.update_token_usage("cat", SYS, 1000, 10, request_id="r1")
    with pytest.raises(InvalidInput):
        priced.update_token_usage("cat", SYS, 1000, 10, cached_input_tokens=800, cache_write_tokens=201)
    assert priced.get_token_stats("cat")["models"][SYS]["calls"] == 1


def test_a_batch_carries_the_cache_counts(priced):
    results = priced.update_token_usage_many(
        [
            {"user": "dan", "model_id": SYS, "input_tokens": 100, "output_tokens": 1, "cached_input_tokens": 60},
            {"user": "dan", "model_id": CUS, "input_tokens": 100, "output_tokens": 1, "cache_write_tokens": 100},
            {"user": "dan", "model_id": SYS, "input_tokens": 5, "output_tokens": 5},
        ]
    )
    assert [r.cost_nano for r in results] == [40 * 1000 + 60 * 100 + 2000, 100 * 3750 + 15_000, 5 * 1000 + 5 * 2000]
    models = priced.get_token_stats("dan")["models"]
    assert models[SYS]["cached_input_tokens"] == 60 and models[CUS]["cache_write_tokens"] == 100


# --- dated prices on a real Redis and the real cluster --------------------------------------------


def test_a_price_change_mid_month_prices_each_call_by_its_own_entry(real_backend, make_meter, clock):
    meter = make_meter(real_backend, prefix="quota", monthly_credit=5, prices=dated_table())
    clock.now = CHANGE - timedelta(seconds=1)
    before = meter.update_token_usage("eve", SYS, 10_000, 1_000, cached_input_tokens=4_000)
    with meter.turn("eve", SYS) as turn:
        in_turn = turn.record(input_tokens=10_000, output_tokens=1_000, cached_input_tokens=4_000)
    clock.now = CHANGE
    after = meter.update_token_usage("eve", SYS, 10_000, 1_000, cached_input_tokens=4_000)
    old_cost = 6_000 * 1000 + 4_000 * 100 + 1_000 * 2000
    new_cost = 6_000 * 500 + 4_000 * 50 + 1_000 * 2000
    assert (before.cost_nano, in_turn.result.cost_nano, after.cost_nano) == (old_cost, old_cost, new_cost)
    stats = meter.get_token_stats("eve", exact=True)
    assert stats["monthly_used"] == Decimal(2 * old_cost + new_cost) / 10**9 == Decimal("0.022")
    assert stats["models"][SYS]["cached_input_tokens"] == 12_000


def test_a_spooled_record_replayed_after_the_change_keeps_its_old_price(real_backend, make_meter, clock, tmp_path):
    path = tmp_path / "w.spool"
    clock.now = CHANGE - timedelta(minutes=5)
    away = make_meter(url=f"redis://127.0.0.1:{free_ports(1, start=26600)[0]}", spool=path, prices=dated_table())
    with away.turn("fay", SYS) as turn:  # Redis away: admitted by the "allow" policy, the record spooled
        spooled = turn.record(
            {
                "id": "chatcmpl-late",
                "usage": {
                    "prompt_tokens": 10_000,
                    "completion_tokens": 1_000,
                    "prompt_tokens_details": {"cached_tokens": 4_000},
                },
            }
        )
    assert spooled.status == "spooled"
    away.close()  # waits for the replay the turn's end started (it failed: Redis is away)
    (entry,) = _pending(Spool(path))
    assert (entry.cached_input_tokens, entry.at) == (4_000, CHANGE - timedelta(minutes=5))
    clock.now = CHANGE + timedelta(days=3)
    meter = make_meter(real_backend, prefix="quota", monthly_credit=5, prices=dated_table(), spool=path)
    assert meter.replay_spool().sent == 1
    model = meter.get_token_stats("fay", exact=True)["models"][SYS]
    assert model["cost"] == Decimal(6_000 * 1000 + 4_000 * 100 + 1_000 * 2000) / 10**9  # the old entry's
    assert (model["cached_input_tokens"], model["calls"]) == (4_000, 1)


def _pending(spool: Spool) -> list[SpoolEntry]:
    """What ``spool`` holds, left in place."""
    claim = spool.claim()
    assert claim is not None
    try:
        return [entry for entry, _ in claim.batch(100)]
    finally:
        claim.release()


@pytest.mark.parametrize("batches", [4, pytest.param(20, marks=pytest.mark.slow)])
def test_a_hundred_thousand_records_through_redis_sum_exactly(redis_server, batches):
    """A real-Redis pipeline test: 20,000 records (100,000 in the slow run, about 15 s here) with
    cache tokens in batches of 5,000; the hash's sums equal the exact Decimal of the tokens at
    their rates."""
    redis_server.client().flushall()
    meter = Meter.from_url(
        redis_server.url, prefix="big", prices=dated_table(), clock=lambda: CHANGE - timedelta(days=1)
    )
    rng = random.Random(7)
    sums = [0, 0, 0, 0]
    try:
        for batch in range(batches):
            records = []
            for i in range(5_000):
                tokens_in, cached, write, out = random_call(rng, 100_000, 4_000)
                for j, n in enumerate((tokens_in, cached, write, out)):
                    sums[j] += n
                records.append(
                    {
                        "user": f"u{i % 50}",
                        "model_id": SYS,
                        "input_tokens": tokens_in,
                        "output_tokens": out,
                        "cached_input_tokens": cached,
                        "cache_write_tokens": write,
                        "request_id": f"b{batch}-{i}",
                    }
                )
            meter.update_token_usage_many(records)
        client = redis_server.client()
        totals = [0, 0, 0, 0, 0]
        for n in range(50):
            h = client.hgetall(f"big:{{u{n}}}:2026-01")
            for j, name in enumerate(("input", "cached_input", "cache_write", "output", "cost_nano")):
                totals[j] += int(h.get(f"{SYS}:{name}".encode(), 0))
    finally:
        meter.close()
    assert totals[:4] == sums
    assert Decimal(totals[4]) / 10**9 == old_entry_cny(*sums)


# --- the price file --------------------------------------------------------------------------------


def test_the_toml_file_with_dated_entries(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(PRICE_FILE)
    table = PriceTable.from_toml(path)
    assert [p.effective_from for p in table.schedule(SYS)] == [None, CHANGE]
    assert table.lookup(SYS, CHANGE - timedelta(microseconds=1)).input_nano_per_token == 1000
    assert table.lookup(SYS, CHANGE).input_nano_per_token == 500
    upcoming = table.as_json(CHANGE - timedelta(days=1))["upcoming"]
    assert [(u["model_id"], u["effective_from"], u["cost_per_1k_input"]) for u in upcoming] == [
        (SYS, "2026-01-16T00:00:00Z", 0.0005)
    ]
    assert table.as_json(CHANGE)["upcoming"] == []
    assert table.as_json(CHANGE)["system"][SYS]["cost_per_1k_cached_input"] == 0.00005


@pytest.mark.parametrize(
    ("system", "message"),
    [
        ([{"cost_per_1k_input": 1, "cost_per_1k_output": 1}] * 2, "same instant, since forever"),
        (
            [
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1},
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1, "effective_from": "2026-02-01T08:00:00+08:00"},
                {"cost_per_1k_input": 2, "cost_per_1k_output": 1, "effective_from": "2026-02-01T00:00:00Z"},
            ],
            "same instant, 2026-02-01T00:00:00Z",
        ),
        (
            [{"cost_per_1k_input": 1, "cost_per_1k_output": 1, "effective_from": "2026-02-01T00:00:00Z"}],
            "would have no price before 2026-02-01T00:00:00Z",
        ),
        (
            [
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1},
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1, "effective_from": "2026-02-01T00:00:00"},
            ],
            "needs Z or an offset",
        ),
        (
            [
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1},
                {"cost_per_1k_input": 1, "cost_per_1k_output": 1, "effective_from": "next week"},
            ],
            "not an ISO 8601 instant",
        ),
        ([], "empty list"),
        (
            {"cost_per_1k_input": 1, "cost_per_1k_output": 1, "cost_per_1k_cached_input": "0.0000001"},
            "multiple of 0.000001",
        ),
        ({"cost_per_1k_input": 1, "cost_per_1k_output": 1, "cost_per_1k_cache_read": 1}, "unknown keys"),
    ],
)
def test_price_file_errors_are_clear_config_errors(system, message):
    with pytest.raises(ConfigError, match=message):
        PriceTable.from_mapping({"system": {SYS: system}})


def test_a_custom_model_priced_from_a_date_is_free_before_it():
    table = PriceTable(
        custom={CUS: {"cost_per_1k_input": 1, "cost_per_1k_output": 1, "effective_from": "2026-02-01T00:00:00Z"}}
    )
    assert table.lookup(CUS, CHANGE).cost_nano(1000, 1000) == 0
    assert table.lookup(CUS, datetime(2026, 2, 1, tzinfo=UTC)).cost_nano(1000, 1000) == 2 * 10**9


def test_a_call_price_may_carry_cache_prices_but_no_date(any_meter):
    price = {"cost_per_1k_input": "0.002", "cost_per_1k_output": "0.002", "cost_per_1k_cached_input": "0.0002"}
    result = any_meter.update_token_usage("gus", "custom_x", 1000, 0, cached_input_tokens=1000, price=price)
    assert result.cost_nano == 1000 * 200
    with pytest.raises(InvalidInput, match="no effective_from"):
        any_meter.update_token_usage("gus", "custom_x", 1, 0, price={**price, "effective_from": "2026-01-01T00:00:00Z"})


# --- quota prices (CLI) and the API ----------------------------------------------------------------


def test_cli_prices_prints_the_table_in_force_and_the_changes_to_come(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(PRICE_FILE)
    runner = CliRunner()
    before = runner.invoke(main, ["prices", "--file", str(path), "--at", "2026-01-10T00:00:00Z"])
    assert before.exit_code == 0, before.output
    current, upcoming = before.output.split("Upcoming changes")
    (row,) = [line.split() for line in current.splitlines() if line.startswith(SYS)]
    assert row == [SYS, "system", "0.001", "0.002", "0.0001", "0.00125", "-"]
    assert "2026-01-16T00:00:00Z" in upcoming and "0.0005" in upcoming
    after = runner.invoke(main, ["prices", "--file", str(path), "--at", "2026-01-16T00:00:00Z", "--json"])
    data = json.loads(after.output)
    assert data["system"][SYS]["cost_per_1k_input"] == 0.0005 and data["upcoming"] == []
    path.write_text(PRICE_FILE.replace("effective_from = 2026-01-16T00:00:00Z", ""))
    bad = runner.invoke(main, ["prices", "--file", str(path)])
    assert bad.exit_code == 2 and "same instant" in bad.output


def test_the_api_records_cache_tokens_and_shows_current_and_upcoming_prices(redis_server, clock, tmp_path):
    from quota_server import create_app

    from .api_support import SERVICE, api_settings, bearer, make_meter

    path = tmp_path / "prices.toml"
    path.write_text(PRICE_FILE)
    redis_server.client().flushall()
    settings = api_settings(QUOTA_PRICES_FILE=str(path))
    meter = make_meter(redis_server.url, clock, settings)
    try:
        client = create_app(settings, meter=meter).test_client()
        body = {"user": "hal", "model_id": SYS, "input_tokens": 1000, "output_tokens": 10, "cached_input_tokens": 600}
        r = client.post("/v1/usage", json=body, headers=bearer(SERVICE))
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.get_json()["cost"] == (400 * 1000 + 600 * 100 + 10 * 2000) / 10**9
        assert r.get_json()["cached_input_tokens"] == 600
        batch = client.post(
            "/v1/usage", json=[{**body, "cache_write_tokens": 400, "request_id": "b1"}], headers=bearer(SERVICE)
        )
        assert batch.get_json()["results"][0]["cache_write_tokens"] == 400
        bad = client.post("/v1/usage", json={**body, "cache_write_tokens": 401}, headers=bearer(SERVICE))
        assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_input"
        stats = client.get("/v1/users/hal/token-stats", headers=bearer(SERVICE)).get_json()
        assert stats["models"][SYS]["cached_input_tokens"] == 1200 and stats["models"][SYS]["cache_write_tokens"] == 400
        models = client.get("/v1/models", headers=bearer(SERVICE)).get_json()  # the meter's clock: 2026-01-15
        assert models["system"][SYS]["cost_per_1k_input"] == 0.001
        assert [u["effective_from"] for u in models["upcoming"]] == ["2026-01-16T00:00:00Z"]
    finally:
        meter.close()


# --- the spool line ----------------------------------------------------------------------------------


def test_spool_lines_carry_the_cache_counts_and_old_lines_still_read(tmp_path):
    at = CHANGE - timedelta(hours=1)
    plain = SpoolEntry("u", SYS, 10, 1, "r1", False, at, 12_000)
    cached = SpoolEntry("u", SYS, 10, 1, "r2", False, at, 11_100, cached_input_tokens=8, cache_write_tokens=1)
    assert b'"v":1' in plain.to_line() and b"cin" not in plain.to_line()  # what older workers write and read
    assert b'"v":2' in cached.to_line()
    for e in (plain, cached):
        assert SpoolEntry.from_line(e.to_line()) == e
    spool = Spool(tmp_path / "s" / "w.spool")
    spool.append(plain)
    spool.append(cached)
    assert _pending(spool) == [plain, cached]


# --- the history: the dump and the archive keep the cache counts -----------------------------------

OLD_MONTH_MODEL_VIEW = """
    CREATE VIEW quota_month_model AS
    SELECT prefix, user_id, month, model_id,
           CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens,
           CAST(SUM(cost_nano) AS BIGINT) AS cost_nano, CAST(SUM(calls) AS BIGINT) AS calls,
           CAST(SUM(estimated_calls) AS BIGINT) AS estimated_calls,
           MAX(CASE WHEN is_system THEN 1 ELSE 0 END) = 1 AS is_system
    FROM quota_model_snapshot
    GROUP BY prefix, user_id, month, model_id"""


def _as_version_3(store) -> None:
    """Turn ``store``'s fresh schema into what version 3 was: no cache columns, the old view."""
    from sqlalchemy import text

    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(text("DROP VIEW quota_month_model"))
        for column in ("cached_input_tokens", "cache_write_tokens"):
            conn.execute(text(f"ALTER TABLE quota_model_snapshot DROP COLUMN {column}"))
        conn.execute(text(OLD_MONTH_MODEL_VIEW))
        conn.execute(text("UPDATE quota_schema_version SET version = 3"))


def test_the_dump_keeps_the_cache_counts_and_migrates_a_version_3_archive(backend, clock, history_url):
    from sqlalchemy import text

    from quota.history import HistoryStore, dump_expired_months
    from quota.history.store import SCHEMA_VERSION

    old = HistoryStore(history_url)
    _as_version_3(old)
    old.close()
    store = HistoryStore(history_url)
    meter = Meter(backend.sync_client(), clock=clock, prefix="quota", prices=dated_table())
    try:
        clock.set(2025, 12, 10, 12, 0, 0)
        meter.update_token_usage("ivy", SYS, 10_000, 100, cached_input_tokens=9_000, cache_write_tokens=500)
        meter.update_token_usage("ivy", CUS, 100, 1)
        clock.set(2026, 1, 15, 12, 0, 0)
        before = meter.get_token_stats("ivy", months=1)["history"]["2025-12"]
        assert store.load_totals("ivy", ["2025-12"]) == {}  # a version-3 archive still reads (nothing yet)
        assert dump_expired_months(meter, store).archived == 1  # migrates it to version 4 first
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == SCHEMA_VERSION
            view = conn.execute(
                text("SELECT cached_input_tokens, cache_write_tokens FROM quota_month_model WHERE model_id = :m"),
                {"m": SYS},
            ).one()
        assert tuple(view) == (9_000, 500)
        archived = store.load_totals("ivy", ["2025-12"])["2025-12"].models
        assert (archived[SYS].cached_input_tokens, archived[SYS].cache_write_tokens) == (9_000, 500)
        assert archived[CUS].cached_input_tokens == 0
        meter.history = store
        assert meter.get_token_stats("ivy", months=1)["history"]["2025-12"] == before
        assert before[SYS]["cached_input"] == 9_000 and before[SYS]["cache_write"] == 500
        report = meter.month_report("2025-12")  # from the archive's rows
        totals = report.summary.models[SYS]
        assert (totals.cached_input_tokens, totals.cache_write_tokens) == (9_000, 500)
    finally:
        meter.close()
        store.close()


def test_the_live_month_report_counts_cache_tokens(any_meter):
    any_meter.update_token_usage("joe", SYS, 100, 1, cached_input_tokens=70)
    any_meter.update_token_usage("kim", SYS, 100, 1, cached_input_tokens=30, cache_write_tokens=5)
    totals = any_meter.month_report().summary.models[SYS]
    assert (totals.input_tokens, totals.cached_input_tokens, totals.cache_write_tokens) == (200, 100, 5)


def test_the_worked_example_of_docs_pricing_md():
    """docs/PRICING.md's price file and figures, computed by the table it documents."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PRICING.md").read_text()
    toml_text = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    import tomllib

    table = PriceTable.from_mapping(tomllib.loads(toml_text))
    deepseek = [
        table.lookup(SYS, datetime(2026, 12, d, h, m, tzinfo=UTC)) for d, h, m in ((10, 0, 0), (15, 15, 59), (20, 0, 0))
    ]
    costs = [p.cost_nano(10_000, 500, 8_000) for p in deepseek]
    assert costs == [12_000_000, 12_000_000, 5_600_000] and sum(costs) == 29_600_000
    assert table.lookup(CUS).cost_nano(12_098, 503, 10_000, 2_048) == 128_625_000
    assert "0.128625 CNY" in doc and "29,600,000" in doc


def test_record_lua_refuses_cache_counts_beyond_the_input_and_changes_nothing(backend, raw):
    """The script checks the split itself too (a client of another version, a hand-made call)."""
    from redis.exceptions import ResponseError

    from quota._batch import eval_args

    call = MeterCore(Settings(prefix="quota")).record("lua", SYS, 100, 1, cached_input_tokens=60, cache_write_tokens=40)
    assert call.args[-4:] == ("", "", "60", "40")  # no hold: ARGV[11] and ARGV[12] are empty
    bad = call._replace(args=(*call.args[:-2], "60", "41"))
    with pytest.raises(ResponseError, match="QUOTA_INVALID record cache tokens"):
        raw.eval(*eval_args(bad))
    assert raw.exists(*call.keys[:2]) == 0
    raw.eval(*eval_args(call))
    assert raw.hget(call.keys[0], f"{SYS}:cache_write") == b"40"


def test_get_model_cost_config_follows_the_meters_clock(make_meter, backend, clock):
    meter = make_meter(backend, prefix="quota", prices=dated_table())
    clock.now = CHANGE - timedelta(seconds=1)
    assert meter.get_model_cost_config(SYS)["cost_per_1k_input"] == Decimal("0.001")
    clock.now = CHANGE
    config = meter.get_model_cost_config(SYS)
    assert (config["cost_per_1k_input"], config["effective_from"]) == (Decimal("0.0005"), "2026-01-16T00:00:00Z")
