"""The Redis key schema (a public contract: ops read it with redis-cli) and the UTC month.

One hash per user per UTC month::

    <prefix>:{<user>}:<YYYY-MM>          hash, see FIELD_* below and docs/OPERATIONS.md
    <prefix>:{<user>}:req:<request_id>   string with a TTL, the idempotency record
    <prefix>:{<user>}:holds              hash, the live turn holds (lua/lib/holds.lua), with a TTL
    <prefix>:{<user>}:outbox             hash, the user's alert events waiting for the webhook (lua/lib/alerts.lua)
    <prefix>:{<user>}:outbox_dead        list, the user's alert events the webhook never took (dead letters)
    <prefix>:{<user>}:adj:<YYYY-MM>      hash, the month's adjustments by id (adjust.lua, quota/_adjust.py)
    <prefix>:{<slot tag>}:outbox_index   sorted set, the users of one hash slot with events (see slot_tag)
    <prefix>:{<user>}:plan               string, the user's standing monthly credit in nano-CNY (no TTL)
    <prefix>:{<user>}:grants             hash, grant_id -> "<remaining_nano>:<amount_nano>:<expires_at_ms>"
                                         (0: never expires), no TTL (lua/lib/grants.lua)
    <prefix>:{<user>}:grant_info         hash, grant_id -> JSON {amount_nano, expires_ms, reason,
                                         created_ms, revoked_ms, revoked_nano} (strings), no TTL
    <prefix>:{<user>}:has_grants         string "1", no TTL: some grant may have something remaining; a
                                         record past the credit reads the grants hash only with it

The braces are a Redis Cluster hash tag: every key of one user lives in one slot, so one script
can touch all of them. Identifiers are validated here before they can reach a key name.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime

from ._errors import InvalidInput

USER_RE = re.compile(r"[A-Za-z0-9_.@+\-]{1,128}")
# Model ids end up inside hash field names; a hash stays a compact listpack only while every
# field is at most 64 bytes, and the longest suffix is ":estimated_calls" (16): 48 fits.
MODEL_RE = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,48}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_.:/@+=\-]{1,128}")
# A record's optional purpose ("chat", "tool", "summary", "naming", or the caller's own word).
PURPOSE_RE = re.compile(r"[a-z0-9_\-]{1,10}")
MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")

# Scalar fields of the user-month hash (no colon, so they never collide with model fields).
FIELD_CREDIT = "credit_nano"  # this month's credit, nano-CNY; absent = the default credit
FIELD_USED = "system_used_nano"  # spend on system models this month, nano-CNY
# Bookkeeping of `quota dump` (quota/history/dump.py, docs/HISTORY.md), written only into expired months:
FIELD_DUMP_GEN = "dump_gen"  # id of this incarnation in the SQL archive; read, no longer written (see FIELD_ORIGIN)
FIELD_DUMP_SEQ = "dump_seq"  # how many times a dump has read it (newest snapshot wins)
# Restore-safe dumps (lua/lib/util.lua, docs/HISTORY.md "Restores"): a hash made after its month (a late
# write) records its origin, when it was created (the server's clock in µs), and is archived as that
# generation; the month's first hash has none and is generation FIRST_GENERATION. A copy restored
# from a backup is thus always the generation the archive holds. Only late hashes carry the field:
# any field more pushed a one-model hash from 232 to 264 bytes (MEMORY USAGE, a jemalloc size class).
FIELD_ORIGIN = "o"
FIRST_GENERATION = 1
# Threshold alerts (lua/lib/alerts.lua, docs/ALERTS.md): the highest threshold (a percent of the credit)
# alerted this month, every one at or below it counting as alerted; and the month's alert event count.
FIELD_ALERTED = "alerted_pct"
FIELD_ALERT_SEQ = "alert_seq"
# Grants (issue 12, lua/lib/grants.lua): what this month's system spend drew from the user's grants,
# nano-CNY. system_used_nano - grants_drawn_nano is what the month's own credit paid.
FIELD_GRANTS_DRAWN = "grants_drawn_nano"
MAX_GRANTS = 1000  # grants per user, spent, expired and revoked included (grant.lua)
# A grant id: like a request id, without ":" (it is a hash field, and shown in URLs).
GRANT_ID_RE = re.compile(r"[A-Za-z0-9_.@+=\-]{1,64}")
# Per-model fields are "<model_id>:<suffix>"; parse them with rpartition(":"). The token fields
# are named "input"/"output" as in the seed's history: one user-month with one model then fits
# in 232 bytes (MEMORY USAGE), where "input_tokens"/"output_tokens" took 264.
SUFFIX_INPUT = "input"  # input tokens
SUFFIX_OUTPUT = "output"  # output tokens
SUFFIX_COST = "cost_nano"
SUFFIX_CALLS = "calls"
SUFFIX_ESTIMATED = "estimated_calls"  # calls whose tokens were estimated (stream cut short)
# Cache tokens (issue 12): parts of "<model>:input" (the total input) priced at the model's cache
# rates (quota/_prices.py); written only by a record that has some, so a model without cache
# tokens has neither field.
SUFFIX_CACHED = (
    "cached_input"  # cache hits (OpenAI cached_tokens, DeepSeek prompt_cache_hit_tokens, Anthropic cache reads)
)
SUFFIX_CACHE_WRITE = "cache_write"  # cache creation (Anthropic cache_creation_input_tokens)
# Corrections (adjust.lua): how many adjustments the model had this month, and their signed cost sum
# (the counters above already include them: these say how much of them is correction).
SUFFIX_ADJUSTMENTS = "adjustments"
SUFFIX_ADJ_COST = "adj_cost_nano"
MODEL_SUFFIXES = (
    SUFFIX_INPUT,
    SUFFIX_OUTPUT,
    SUFFIX_COST,
    SUFFIX_CALLS,
    SUFFIX_ESTIMATED,
    SUFFIX_CACHED,
    SUFFIX_CACHE_WRITE,
    SUFFIX_ADJUSTMENTS,
    SUFFIX_ADJ_COST,
)
# Per-purpose counters (issue 15): "<model_id>:n@<purpose>" (calls) and "<model_id>:c@<purpose>"
# (cost_nano). Short on purpose: 48 (model) + 3 (":n@") + 10 (purpose) = 61 bytes, within the
# 64-byte listpack limit (see MODEL_RE); "@" can not appear in a purpose nor in a plain suffix, so
# rpartition(":") still splits every field unambiguously. "<model_id>:purposes" counts the distinct
# named purposes of the model this month: at most MAX_PURPOSES, a further one is counted under
# PURPOSE_OTHER (record.lua decides it in the same atomic step), so a hash can not grow without bound.
SUFFIX_PURPOSE_CALLS = "n@"
SUFFIX_PURPOSE_COST = "c@"
SUFFIX_PURPOSE_COUNT = "purposes"
MAX_PURPOSES = 8
PURPOSE_OTHER = "other"
# Not usage: the "auto" turn hold learned for this user and model (turn_end.lua), nano-CNY.
SUFFIX_HOLD_ESTIMATE = "hold_est_nano"


def _check(value: object, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not pattern.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidInput(f"invalid {what} {shown!r}: {rule}")
    return value


def validate_user(user: object) -> str:
    return _check(user, USER_RE, "user id", "use 1 to 128 characters of A-Z a-z 0-9 _ . @ + -")


def validate_model_id(model_id: object) -> str:
    return _check(model_id, MODEL_RE, "model_id", "use 1 to 48 characters of A-Z a-z 0-9 _ . : / @ + -")


def validate_purpose(purpose: object) -> str | None:
    """None (no purpose) or 1 to 10 characters of a-z 0-9 _ -."""
    if purpose is None:
        return None
    return _check(purpose, PURPOSE_RE, "purpose", "use 1 to 10 characters of a-z 0-9 _ -")


def validate_request_id(request_id: object) -> str:
    return _check(request_id, REQUEST_ID_RE, "request_id", "use 1 to 128 characters of A-Z a-z 0-9 _ . : / @ + = -")


def validate_grant_id(grant_id: object) -> str:
    return _check(grant_id, GRANT_ID_RE, "grant_id", "use 1 to 64 characters of A-Z a-z 0-9 _ . @ + = -")


def validate_prefix(prefix: object) -> str:
    return _check(prefix, PREFIX_RE, "key prefix", "use 1 to 32 characters of A-Z a-z 0-9 _ . -")


def validate_month(month: object) -> str:
    if not isinstance(month, str) or not MONTH_RE.fullmatch(month):
        raise InvalidInput(f"invalid month {month!r}: use YYYY-MM, e.g. 2026-01")
    return month


# --- the UTC month -------------------------------------------------------------------------------


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is refused (it would silently use local time)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput("the clock must return an aware datetime (e.g. datetime.now(timezone.utc))")
    return moment.astimezone(UTC)


def month_of(moment: datetime) -> str:
    """The UTC month of ``moment`` as ``YYYY-MM``."""
    # Fast path for the usual clock (datetime.now(timezone.utc)): it is already UTC, so skip the
    # conversion; this runs once per record (about 0.5 µs less per record, bench/ issue 2).
    m = moment if moment.tzinfo is UTC else utc(moment)
    return f"{m.year:04d}-{m.month:02d}"


def month_start(month: str) -> datetime:
    year, mon = (int(p) for p in validate_month(month).split("-"))
    return datetime(year, mon, 1, tzinfo=UTC)


def add_months(month: str, delta: int) -> str:
    year, mon = (int(p) for p in validate_month(month).split("-"))
    index = year * 12 + (mon - 1) + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def next_month_start(month: str) -> datetime:
    return month_start(add_months(month, 1))


def iso_z(moment: datetime) -> str:
    """``2026-02-01T00:00:00Z``: the form the seed uses for ``last_reset``."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- key names -----------------------------------------------------------------------------------


class KeySchema:
    """Builds key names for one prefix. All inputs must be validated already."""

    def __init__(self, prefix: str = "quota") -> None:
        self.prefix = validate_prefix(prefix)
        self._index_keys: list[str] | None = None

    def month_key(self, user: str, month: str) -> str:
        return f"{self.prefix}:{{{user}}}:{month}"

    def request_key(self, user: str, request_id: str) -> str:
        return f"{self.prefix}:{{{user}}}:req:{request_id}"

    def archive_epoch_key(self) -> str:
        """The value ``quota dump`` changes after each commit to the SQL history: archived reads
        cached under one value are still current (quota._stats.ArchiveCache)."""
        return f"{self.prefix}:archive_epoch"

    def adjustments_key(self, user: str, month: str) -> str:
        return f"{self.prefix}:{{{user}}}:adj:{month}"

    def holds_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:holds"

    def plan_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:plan"

    def grants_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:grants"

    def grant_info_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:grant_info"

    def has_grants_key(self, user: str) -> str:
        """The marker set with every grant (lua/lib/grants.lua): no marker, no grants read by a record."""
        return f"{self.prefix}:{{{user}}}:has_grants"

    def outbox_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:outbox"

    def dead_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:outbox_dead"

    def outbox_index_key(self, user: str) -> str:
        """The outbox index of ``user``'s hash slot: in the same slot as the user's own keys, so
        that the script that writes an event can add the user to it atomically (see slot_tag)."""
        return self.index_key_of_slot(user_slot(user))

    def index_key_of_slot(self, slot: int) -> str:
        return f"{self.prefix}:{{{slot_tag(slot)}}}:outbox_index"

    def all_index_keys(self) -> list[str]:
        """Every outbox index there can be, one per hash slot, in slot order (the notifier reads them all)."""
        if self._index_keys is None:
            self._index_keys = [self.index_key_of_slot(slot) for slot in range(SLOTS)]
        return self._index_keys

    def month_pattern(self, month: str = "????-??") -> str:
        """A SCAN MATCH pattern for every user's hash of ``month`` (default: every month)."""
        return f"{self.prefix}:{{*}}:{month}"

    def month_key_users(self, month: str) -> Callable[[bytes | str], str | None]:
        """A parser of ``month``'s keys: the user of one key, or None for any other key. The month
        report's (a million keys): one slice and one regex check, where ``parse_month_key`` took
        three times as long."""
        head, tail = len(self.prefix) + 2, len(month) + 2
        ending = f"}}:{month}"
        start = f"{self.prefix}:{{"
        user_re = USER_RE.fullmatch

        def user_of(key: bytes | str) -> str | None:
            text = key.decode() if isinstance(key, bytes) else key
            if not (text.startswith(start) and text.endswith(ending)):
                return None
            user = text[head:-tail]
            return user if user_re(user) else None

        return user_of

    def parse_month_key(self, key: str) -> tuple[str, str] | None:
        """``(user, month)`` for a user-month key of this prefix, else None."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head) or not key.endswith("}:" + key[-7:]):
            return None
        user, month = key[len(head) : -9], key[-7:]
        if USER_RE.fullmatch(user) and MONTH_RE.fullmatch(month):
            return user, month
        return None


# --- hash slots ------------------------------------------------------------------------------------

SLOTS = 16384  # hash slots of a Redis Cluster
_TAG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def user_slot(user: str) -> int:
    """The Redis Cluster hash slot of ``user``'s keys (CRC16 of the hash tag, as the server computes it)."""
    return binascii.crc_hqx(user.encode(), 0) % SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For every hash slot, the shortest tag (``~`` and 1 to 4 of [0-9A-Za-z], first found) whose
    CRC16 falls in it: 73,033 candidates, 18 ms, once per process. ``~`` is not allowed in a user id,
    so a tag never names a user."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    for length in range(1, 5):
        for combo in itertools.product(_TAG_ALPHABET, repeat=length):
            tag = "~" + "".join(combo)
            slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if not missing:
                    return tuple(tags)  # type: ignore[arg-type]
    raise AssertionError("unreachable: 4 characters cover every slot")


def slot_tag(slot: int) -> str:
    """A hash tag in ``slot``: a key ``<prefix>:{<tag>}:...`` lives in the same slot (and so on the
    same cluster node) as every key of the users of that slot, so one script may write both."""
    return _slot_tags()[slot]
