"""Token usage from what LLM clients return. Pure parsing, no I/O.

Accepted shapes (objects such as the ``openai`` package's pydantic models, or plain dicts):

* an OpenAI-compatible ``usage`` (``prompt_tokens`` / ``completion_tokens``, as DeepSeek and most
  gateways return it); the cache hits among the prompt tokens are OpenAI's
  ``prompt_tokens_details.cached_tokens`` or DeepSeek's ``prompt_cache_hit_tokens``;
* an Anthropic-style ``usage`` (``input_tokens`` / ``output_tokens``; cache writes and reads are
  added to the input, because Anthropic leaves them out of ``input_tokens`` while OpenAI-style
  ``prompt_tokens`` already includes cached tokens: both then count every token the model read);
  ``cache_read_input_tokens`` are the cache hits, ``cache_creation_input_tokens`` the cache writes;
* a whole response carrying ``usage`` and ``id`` (chat completion, Anthropic message);
* a stream, chunk by chunk, through :class:`StreamTally`: the chunk that carries ``usage`` (the last
  one with ``stream_options={"include_usage": True}``) gives the real figures; without it the
  tokens are estimated from the text produced and the result is marked ``estimated``.

A usage of 0 is a real value (a cached or empty reply), never taken as "missing".
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._errors import InvalidInput
from ._keys import REQUEST_ID_RE

MAX_TOKENS = 10**9  # the most tokens one call may count, in or out
# Scripts that tokenise close to one token per character (CJK ideographs, kana, hangul).
_DENSE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English and code
TOKENS_PER_MESSAGE = 4  # role and separators around each chat message


class Usage(NamedTuple):
    """Tokens of one LLM call. ``estimated`` is True when any part was estimated from text.
    ``input_tokens`` is the total input; ``cached_input_tokens`` (cache hits) and
    ``cache_write_tokens`` (cache creation) are parts of it, priced at their own rates."""

    input_tokens: int
    output_tokens: int
    request_id: str | None = None
    estimated: bool = False
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0


class Tokens(NamedTuple):
    """What one usage object says: the total input, the output, and the cached and cache-write
    parts of the input."""

    input: int
    output: int
    cached: int = 0
    cache_write: int = 0


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def validate_tokens(value: object, what: str) -> int:
    """A token count: an int (not a bool) from 0 to ``MAX_TOKENS``; InvalidInput otherwise. The
    one token rule, for counts a caller passes (``quota._core``) and counts a provider returned."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an int from 0 to {MAX_TOKENS}, got {type(value).__name__}")
    if not 0 <= value <= MAX_TOKENS:
        raise InvalidInput(f"{what} must be from 0 to {MAX_TOKENS}, got {value}")
    return value


def validate_cache_tokens(input_tokens: int, cached: object, cache_write: object) -> tuple[int, int]:
    """``(cached_input_tokens, cache_write_tokens)``, each a token count, parts of ``input_tokens``
    (the total input): InvalidInput when together they are more than it."""
    cached_n = validate_tokens(cached, "cached_input_tokens")
    write_n = validate_tokens(cache_write, "cache_write_tokens")
    if cached_n + write_n > input_tokens:
        raise InvalidInput(
            f"cached_input_tokens ({cached_n}) + cache_write_tokens ({write_n}) are parts of input_tokens "
            f"(the total input, {input_tokens}) and can not be more than it"
        )
    return cached_n, write_n


def _count(value: Any, what: str) -> int | None:
    return None if value is None else validate_tokens(value, what)


def request_id_from(provider_id: Any) -> str | None:
    """A request id from a provider's response id (``chatcmpl-...``, ``msg_...``).

    Ids that fit the key charset are kept as they are, so an operator can find them in Redis;
    others (too long, spaces, unicode) become ``sha256:<40 hex>``. None for a missing id.
    """
    if provider_id is None or provider_id == "":
        return None
    text = provider_id if isinstance(provider_id, str) else str(provider_id)
    if REQUEST_ID_RE.fullmatch(text):
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def tokens_of_usage(usage: Any) -> Tokens | None:
    """The :class:`Tokens` of a usage object or dict, or None when it is not one.

    OpenAI and DeepSeek count cache hits inside ``prompt_tokens``; Anthropic leaves cache reads
    and writes out of ``input_tokens``, so they are added to make the total input."""
    prompt = _count(_get(usage, "prompt_tokens"), "usage.prompt_tokens")
    completion = _count(_get(usage, "completion_tokens"), "usage.completion_tokens")
    if prompt is not None or completion is not None:
        details = _get(usage, "prompt_tokens_details")
        cached = _count(_get(details, "cached_tokens"), "usage.prompt_tokens_details.cached_tokens")
        if cached is None:
            cached = _count(_get(usage, "prompt_cache_hit_tokens"), "usage.prompt_cache_hit_tokens")
        # gateways that pass cache writes through the OpenAI shape (the openai package has the field)
        written = _count(_get(details, "cache_write_tokens"), "usage.prompt_tokens_details.cache_write_tokens")
        total = prompt or 0
        cached_n, written_n = validate_cache_tokens(total, cached or 0, written or 0)
        return Tokens(total, completion or 0, cached_n, written_n)
    tokens_in = _count(_get(usage, "input_tokens"), "usage.input_tokens")
    tokens_out = _count(_get(usage, "output_tokens"), "usage.output_tokens")
    if tokens_in is None and tokens_out is None:
        return None
    cache_write = _count(_get(usage, "cache_creation_input_tokens"), "usage.cache_creation_input_tokens") or 0
    cache_read = _count(_get(usage, "cache_read_input_tokens"), "usage.cache_read_input_tokens") or 0
    total = validate_tokens((tokens_in or 0) + cache_write + cache_read, "usage input (input + cache read + write)")
    return Tokens(total, tokens_out or 0, cache_read, cache_write)


def usage_from(obj: Any) -> Usage:
    """The :class:`Usage` in a response or usage object/dict; InvalidInput when it has none."""
    if isinstance(obj, Usage):
        return obj
    if isinstance(obj, (str, bytes, int, float)) or obj is None:
        raise InvalidInput(f"cannot read token usage from {type(obj).__name__}")
    usage = _get(obj, "usage")
    if usage is not None:
        tokens = tokens_of_usage(usage)
        if tokens is None:
            raise InvalidInput("the response's usage has neither prompt/completion nor input/output tokens")
        return _usage(tokens, request_id_from(_get(obj, "id")))
    tokens = tokens_of_usage(obj)
    if tokens is not None:
        return _usage(tokens, None)
    raise InvalidInput(
        f"{type(obj).__name__} carries no token usage: pass input_tokens/output_tokens, "
        "or meter a stream with turn.stream(...)"
    )


def _usage(tokens: Tokens, request_id: str | None, estimated: bool = False) -> Usage:
    return Usage(tokens.input, tokens.output, request_id, estimated, tokens.cached, tokens.cache_write)


# --- estimates -----------------------------------------------------------------------------------


class TextCounter:
    """Counts characters as they stream in, for :func:`estimate_tokens` without keeping the text."""

    __slots__ = ("dense", "other")

    def __init__(self) -> None:
        self.dense = 0
        self.other = 0

    def add(self, text: Any) -> None:
        if isinstance(text, str) and text:
            dense = len(_DENSE.findall(text))
            self.dense += dense
            self.other += len(text) - dense

    @property
    def tokens(self) -> int:
        """A deliberately plain estimate: one token per CJK character, one per 4 other characters."""
        return self.dense + math.ceil(self.other / CHARS_PER_TOKEN)


def estimate_tokens(text: str) -> int:
    counter = TextCounter()
    counter.add(text)
    return counter.tokens


def estimate_prompt_tokens(prompt: Any) -> int:
    """Estimate the input of a call from its prompt: a string or a list of chat messages."""
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    counter = TextCounter()
    messages = 0
    for message in prompt if isinstance(prompt, Iterable) else ():
        messages += 1
        content = _get(message, "content")
        if isinstance(content, str):
            counter.add(content)
        elif isinstance(content, Iterable) and not isinstance(content, (bytes, Mapping)):
            for part in content:
                counter.add(part if isinstance(part, str) else _get(part, "text"))
    return counter.tokens + TOKENS_PER_MESSAGE * messages


# --- streams -------------------------------------------------------------------------------------


class StreamTally:
    """Follows a stream chunk by chunk and says what it used, even if it stopped early.

    Understands OpenAI-compatible chunks (``choices[].delta`` with ``content``,
    ``reasoning_content`` and tool-call ``arguments``; ``usage`` on the last chunk when asked for)
    and Anthropic stream events (``message_start``, ``content_block_delta``, ``message_delta``).
    Unknown shapes are ignored: a tally never raises while the reply is streaming.
    """

    def __init__(self, prompt_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.provider_id: Any = None
        self.text = TextCounter()
        self.chunks = 0
        self.finished = False  # a finish_reason / message_stop was seen
        self._input: Tokens | None = None  # the input side (total, cached, cache_write); output unused
        self._output: int | None = None
        self._complete = False

    def feed(self, chunk: Any) -> None:
        self.chunks += 1
        try:
            self._feed(chunk)
        except InvalidInput:
            pass  # a malformed usage in one chunk: the estimate stands in for it

    def _feed(self, chunk: Any) -> None:
        kind = _get(chunk, "type")
        if kind == "message_start":
            message = _get(chunk, "message")
            self.provider_id = self.provider_id or _get(message, "id")
            self._take_usage(_get(message, "usage"), final=False)
            return
        if kind == "content_block_delta":
            delta = _get(chunk, "delta")
            for name in ("text", "partial_json", "thinking"):
                self.text.add(_get(delta, name))
            return
        if kind in ("message_delta", "message_stop"):
            self._take_usage(_get(chunk, "usage"), final=True)
            self.finished = self.finished or kind == "message_stop"
            return
        self.provider_id = self.provider_id or _get(chunk, "id")
        for choice in _get(chunk, "choices") or ():
            delta = _get(choice, "delta")
            if delta is not None:
                self.text.add(_get(delta, "content"))
                self.text.add(_get(delta, "reasoning_content"))
                for call in _get(delta, "tool_calls") or ():
                    function = _get(call, "function")
                    self.text.add(_get(function, "name"))
                    self.text.add(_get(function, "arguments"))
            if _get(choice, "finish_reason"):
                self.finished = True
        self._take_usage(_get(chunk, "usage"), final=True)

    def _take_usage(self, usage: Any, *, final: bool) -> None:
        if usage is None:
            return
        tokens = tokens_of_usage(usage)
        if tokens is None:
            return
        if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
            self._input, self._output = tokens, tokens.output  # OpenAI style: whole, on one chunk
            self._complete = True
            return
        # Anthropic: message_start carries the input (its output_tokens is a placeholder), and
        # message_delta the final output count (newer API versions repeat the input there too).
        if _get(usage, "input_tokens") is not None:
            self._input = tokens
        if final and _get(usage, "output_tokens") is not None:
            self._output = tokens.output
            self._complete = True

    @property
    def has_usage(self) -> bool:
        """The provider's own figures arrived (the result will not be an estimate)."""
        return self._provider_figures() is not None

    def _provider_figures(self) -> Tokens | None:
        """The tokens as the provider gave them, once both sides arrived; else None."""
        if self._complete and self._input is not None and self._output is not None:
            return self._input._replace(output=self._output)
        return None

    def usage(self) -> Usage:
        """The provider's figures when they arrived, else an estimate marked ``estimated``.

        An estimate never goes below what the provider already said: the input from Anthropic's
        ``message_start`` is kept, and the output is at least the text seen so far.
        """
        request_id = request_id_from(self.provider_id)
        figures = self._provider_figures()
        if figures is not None:
            return _usage(figures, request_id)
        tokens_in = self._input or Tokens(self.prompt_tokens, 0)
        tokens_out = max(self._output or 0, self.text.tokens)
        return _usage(
            tokens_in._replace(input=min(tokens_in.input, MAX_TOKENS), output=min(tokens_out, MAX_TOKENS)),
            request_id,
            True,
        )
