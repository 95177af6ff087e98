"""quota.usage: token usage parsed from what LLM clients return (pure, no Redis)."""

from __future__ import annotations

import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from quota import InvalidInput
from quota._usage import (
    StreamTally,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
    request_id_from,
    tokens_of_usage,
    usage_from,
)


def completion(usage: dict | None, rid: str = "chatcmpl-abc") -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": rid,
            "object": "chat.completion",
            "created": 0,
            "model": "deepseek-chat",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
            "usage": usage,
        }
    )


def chunk(
    rid: str = "chatcmpl-s",
    content: str | None = None,
    finish: str | None = None,
    usage: dict | None = None,
    choices: bool = True,
) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(
        {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}] if choices else [],
            "usage": usage,
        }
    )


def test_openai_usage_object_and_dict():
    assert usage_from(CompletionUsage(prompt_tokens=12, completion_tokens=7, total_tokens=19)) == (
        12,
        7,
        None,
        False,
        0,
        0,
    )
    assert usage_from({"prompt_tokens": 12, "completion_tokens": 7}) == Usage(12, 7)


def test_deepseek_usage_with_cache_fields_counts_prompt_tokens_once():
    # DeepSeek: prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 60,
        "prompt_cache_miss_tokens": 40,
    }
    assert tokens_of_usage(usage) == (100, 5, 60, 0)  # the 60 hits are a part of the 100


def test_whole_response_gives_its_id_as_request_id():
    assert usage_from(completion({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})) == Usage(
        3, 4, "chatcmpl-abc", False
    )
    assert usage_from({"id": "msg_01X", "usage": {"input_tokens": 10, "output_tokens": 2}}) == Usage(10, 2, "msg_01X")


def test_zero_is_a_real_value_not_a_missing_one():
    assert usage_from({"prompt_tokens": 0, "completion_tokens": 0}) == Usage(0, 0)
    assert usage_from({"input_tokens": 0, "output_tokens": 0}) == Usage(0, 0)
    assert usage_from({"id": "r", "usage": {"prompt_tokens": 0, "completion_tokens": 9}}) == Usage(0, 9, "r")


def test_anthropic_cache_tokens_are_added_to_the_input():
    usage = {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    }
    # the total input, of which 1000 were cache reads and 100 cache writes
    assert usage_from(usage) == Usage(1110, 3, cached_input_tokens=1000, cache_write_tokens=100)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "text",
        5,
        {"nothing": 1},
        {"prompt_tokens": -1, "completion_tokens": 0},
        {"prompt_tokens": True, "completion_tokens": 0},
        {"prompt_tokens": 1.5, "completion_tokens": 0},
        {"prompt_tokens": 10**9 + 1, "completion_tokens": 0},
        {"id": "x", "usage": {"foo": 1}},
    ],
)
def test_garbage_is_refused_clearly(bad):
    with pytest.raises(InvalidInput):
        usage_from(bad)


def test_a_response_without_usage_is_refused_not_counted_as_zero():
    with pytest.raises(InvalidInput, match="no token usage"):
        usage_from(completion(None))


def test_request_ids_keep_good_ids_and_hash_the_rest():
    assert request_id_from("chatcmpl-9a8B_c.d") == "chatcmpl-9a8B_c.d"
    assert request_id_from(None) is None and request_id_from("") is None
    for odd in ("has space", "x" * 129, "ünïcode", "a\nb"):
        rid = request_id_from(odd)
        assert rid.startswith("sha256:") and len(rid) == 47
        assert rid == request_id_from(odd)  # stable: a retry maps to the same id
    assert request_id_from("has space") != request_id_from("has  space")


def test_estimates():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("你好世界") == 4  # one per CJK character
    assert estimate_tokens("你好 abcd") == 2 + 2  # 2 dense + ceil(5 / 4)
    messages = [
        {"role": "user", "content": "abcdefgh"},
        {"role": "assistant", "content": [{"type": "text", "text": "你好"}]},
    ]
    assert estimate_prompt_tokens(messages) == 2 + 2 + 2 * 4  # text + 4 per message
    assert estimate_prompt_tokens(None) == 0 and estimate_prompt_tokens("abcd") == 1


def test_stream_with_usage_chunk_is_exact():
    tally = StreamTally(prompt_tokens=999)
    for c in [
        chunk(content="Hel"),
        chunk(content="lo"),
        chunk(finish="stop"),
        chunk(choices=False, usage={"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}),
    ]:
        tally.feed(c)
    assert tally.has_usage and tally.finished
    assert tally.usage() == Usage(21, 2, "chatcmpl-s", False)


def test_stream_usage_of_zero_is_real():
    tally = StreamTally()
    tally.feed(chunk(choices=False, usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))
    assert tally.usage() == Usage(0, 0, "chatcmpl-s", False)


def test_stream_cut_short_is_estimated_from_text_and_prompt():
    tally = StreamTally(prompt_tokens=40)
    tally.feed(chunk(content="你好"))
    tally.feed(chunk(content="abcdefghi"))
    assert not tally.has_usage and not tally.finished
    assert tally.usage() == Usage(40, 2 + 3, "chatcmpl-s", True)


def test_stream_of_nothing_is_still_a_record():
    assert StreamTally(prompt_tokens=7).usage() == Usage(7, 0, None, True)


def test_tool_calls_and_reasoning_count_towards_the_estimate():
    tally = StreamTally()
    tally.feed(
        {
            "id": "c1",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "reasoning_content": "abcd",
                        "tool_calls": [{"index": 0, "function": {"name": "get_x", "arguments": '{"a":1}'}}],
                    },
                    "finish_reason": None,
                }
            ],
        }
    )
    assert tally.usage() == Usage(0, (4 + 5 + 7) // 4, "c1", True)  # 16 characters in all


def test_anthropic_stream_events():
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 25, "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "abcdefgh"}},
    ]
    tally = StreamTally()
    for e in events:
        tally.feed(e)
    # cut here: the input is the provider's, the output an estimate (not the placeholder 1)
    assert tally.usage() == Usage(25, 2, "msg_1", True)
    tally.feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}})
    tally.feed({"type": "message_stop"})
    assert tally.usage() == Usage(25, 15, "msg_1", False)


def test_a_malformed_chunk_never_breaks_the_stream():
    tally = StreamTally()
    for odd in (None, 3, "data", {"choices": None}, {"usage": {"prompt_tokens": -5, "completion_tokens": 1}}):
        tally.feed(odd)
    assert tally.usage().estimated
