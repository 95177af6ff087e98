"""``AsyncMeter``: the client. Only I/O lives here; the rules are in ``quota._core``.

Hand-written for asyncio; ``quota/_sync/meter.py`` (``Meter``) is generated from it by
``scripts/unasync.py``. What differs beyond ``async``/``await`` is in ``._compat``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .. import _audit as audit
from .._adjust import Adjustment, adjust_call, adjustments_from_hash, audit_adjustment, audit_outcome
from .._adjust import audit_entry as adjustment_audit_entry
from .._audit import LIBRARY, AuditEntry, AuditSink, validate_actor
from .._batch import SendOne, Step, plan_batch
from .._config import Settings
from .._connect import (
    HISTORY_FROM_ENV,
    REDIS_ERRORS,
    describe_client,
    error_of,
    history_from_settings,
    lost_connection,
    open_client,
    settings_with,
    slot_busy_pause,
    storage_errors,
)
from .._core import Clock, MeterCore, R, ScriptCall
from .._errors import AuditUnavailable, BatchError, ConfigError, QuotaError, StorageUnavailable
from .._keys import validate_month, validate_user
from .._prices import PriceTable
from .._replay import ReplayReport
from .._report import (
    SCAN_COUNT_MIN,
    MonthData,
    MonthReport,
    MonthReportBuilder,
    ReportCache,
    next_scan_count,
    pause_after,
    plan_keys,
    plan_nano,
)
from .._results import CreditResult, Grant, PlanResult, QuotaCheck, UsageResult
from .._stats import ArchiveCache, MonthUsage, merge_month
from .._turn_rules import TurnOptions
from ._compat import (
    LOST_CONNECTION,
    USE_ASYNCIO,
    ClusterClient,
    LoopClients,
    OnLoop,
    prefetch,
    send_script,
    send_scripts,
    sleep,
    to_thread,
    wait_background,
)
from .turn import AsyncTurn, replay

log = logging.getLogger("quota.meter")


class AsyncMeter:
    """Counts LLM calls per user and model in Redis and checks the monthly credit.

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``. Settings come
    from the environment (see ``quota._config``) unless given; keyword options override single
    settings (``prefix=``, ``monthly_credit=`` in CNY, ``dedupe_ttl_s=``, ``prices=``,
    ``history_months=``); any other keyword is a ``ConfigError`` that names it. ``clock`` returns
    an aware datetime; tests pin it to any instant.

    Under asyncio a client belongs to the event loop that first used it: the asyncio meter, when
    ``from_url`` built it, keeps one client per event loop (a second ``asyncio.run()``, a thread
    with its own loop, Django's async test client), each closed when its loop shuts down; on a
    client you pass, it stays on the first loop that uses it and says so (``ConfigError``) from
    any other (see ``_compat.LoopClients``). The sync meter has one client for every thread.
    History reads (``get_token_stats`` with an archive) go to the blocking SQL store through
    ``_compat.to_thread``: in a thread for the asyncio client, in the caller's for the sync one.
    """

    def __init__(
        self,
        client: Any,
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        history: Any = None,
        spool: Any = None,
        on_unavailable: str = "allow",
        **overrides: Any,
    ) -> None:
        self.core = MeterCore(settings_with(settings, overrides, what=f"{type(self).__name__}(client)"), clock)
        self.turn_options = TurnOptions(spool, on_unavailable)  # see quota._turn_rules
        self.history = history
        self.where = describe_client(client)
        # How a call is sent, for the event loop's auto-pipeline (quota/_async/_pipeline.py).
        self._clients = LoopClients(client, self.core.settings, senders=(AsyncMeter._evalsha, self._run_plan))
        self._reports = ReportCache(self.core.settings.report_cache_s)
        self._archives = ArchiveCache()  # archived months for get_token_stats, per archive epoch

    @classmethod
    def from_url(cls, url: str | None = None, *, cluster: bool | None = None, **options: Any) -> AsyncMeter:
        """Make one on ``url`` (default ``REDIS_URL``): ``redis://``, ``rediss://``, ``unix://``,
        or ``redis+cluster://host:port`` for a cluster. Options that are not quota's go to redis-py
        (``socket_timeout=``, ...); one redis-py does not take either is a ``ConfigError`` now. The
        history store comes from ``QUOTA_HISTORY_URL`` unless ``history=`` is given (None: no
        history). Callers beyond ``max_connections`` busy connections (per node, per event loop)
        queue for one, up to ``pool_timeout_s`` (see quota._connect)."""
        history = options.pop("history", HISTORY_FROM_ENV)
        client, settings, own, remake = open_client(
            url, cluster, options, use_asyncio=USE_ASYNCIO, what=f"{cls.__name__}.from_url"
        )
        meter = cls(client, settings=settings, **own)
        meter._clients.remake = remake  # its own client: it may make one like it for another event loop
        meter.history = history_from_settings(meter.settings) if history is HISTORY_FROM_ENV else history
        return meter

    @property
    def client(self) -> Any:
        """The redis-py client (the asyncio meter's: the running event loop's; outside any loop,
        the first one, to look at)."""
        return self._clients.current().client

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def prices(self) -> PriceTable:
        return self.core.prices

    async def aclose(self) -> None:
        """Close the client (after any spool replay a turn started in the background). The asyncio
        meter closes the running loop's client; each other loop's closes with its loop."""
        await wait_background(self.turn_options)
        await self._clients.aclose()

    async def __aenter__(self) -> AsyncMeter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- operations ------------------------------------------------------------------------------

    async def update_token_usage(
        self,
        user: str,
        model_id: str,
        input_tokens: int,
        output_tokens: int,
        *,
        request_id: str | None = None,
        price: Mapping[str, Any] | None = None,
        estimated: bool = False,
        purpose: str | None = None,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> UsageResult:
        """Count one LLM call. Never refuses for the credit; a repeated ``request_id`` counts once.
        ``purpose`` (``"chat"``, ``"tool"``, ...: 1 to 10 of a-z 0-9 _ -) is also counted per model.
        ``input_tokens`` is the total input; ``cached_input_tokens`` (cache hits) and
        ``cache_write_tokens`` (cache creation) are parts of it, priced at the model's cache
        rates (docs/PRICING.md). The price is the one in force at the meter clock's now."""
        return await self.run(
            self.core.record(
                user,
                model_id,
                input_tokens,
                output_tokens,
                request_id=request_id,
                price=price,
                estimated=estimated,
                purpose=purpose,
                cached_input_tokens=cached_input_tokens,
                cache_write_tokens=cache_write_tokens,
            )
        )

    async def update_token_usage_many(self, records: Iterable[Mapping[str, Any]]) -> list[UsageResult]:
        """Count many calls in one pipelined round trip per node; one result per record."""
        calls = self.core.record_many(records)
        replies = await self.run_many(calls)
        outcomes = [error_of(r, self.where) or c.parse(r) for c, r in zip(calls, replies)]
        results = [r for r in outcomes if not isinstance(r, QuotaError)]
        if len(results) < len(outcomes):
            raise BatchError(outcomes)
        return results

    async def check_quota_available(self, user: str, model_id: str) -> QuotaCheck:
        """May ``user`` start a new message on ``model_id``? Custom models always may."""
        return await self.run(self.core.check(user, model_id))

    async def set_monthly_credit(
        self, user: str, credit: Any, month: str | None = None, *, add: bool = False, actor: str = LIBRARY
    ) -> CreditResult:
        """Set ``user``'s credit (CNY) for ``month`` (default: the current UTC month). With
        ``add=True``, add ``credit`` to the month's credit instead (to the plan's, else the default
        credit while none is set), atomically: two top-ups at once both count. Audited (see
        ``grant_credit``)."""
        call = self.core.set_credit(user, credit, month, add=add)
        entry = self._audit_entry(actor, audit.SET_MONTHLY_CREDIT, call.keys[0].rpartition(":")[2], user)
        entry.requested_nano = int(call.args[0])
        entry.reason = "add" if add else None

        def outcome(result: CreditResult) -> tuple[int | None, int | None, bool]:
            before = result.credit_before_nano
            return before, result.monthly_credit_nano, before != result.monthly_credit_nano

        return await self._audited(call, entry, outcome)

    # --- grants and plans (issue 12; lua/lib/grants.lua, docs/PRICING.md) ------------------------

    async def grant_credit(
        self,
        user: str,
        amount: Any,
        *,
        expires_at: datetime | None = None,
        grant_id: str | None = None,
        reason: str | None = None,
        actor: str = LIBRARY,
    ) -> Grant:
        """Give ``user`` ``amount`` CNY beyond the monthly credit, valid until ``expires_at`` (an
        aware datetime; None: until spent). System spend beyond the month's credit draws on live
        grants, earliest expiry first, in the record's own atomic step; admission counts them.
        Idempotent by ``grant_id``: a repeat with the same content returns the grant as it is now
        (``created`` False), a different content is ``RequestConflict``.

        Every credit change is written to the audit trail first (``history``, see quota._audit, with
        ``actor``: ``library`` by default); when that row can not be written the change is not made
        (``AuditUnavailable``). A meter without a history store changes credit unaudited."""
        call = self.core.grant(user, amount, expires_at=expires_at, grant_id=grant_id, reason=reason)
        gid, amount_arg = call.args[0], int(call.args[1])
        entry = self._audit_entry(actor, audit.GRANT, None, user, gid, amount_arg, reason)

        def outcome(grant: Grant) -> tuple[int | None, int | None, bool]:
            return (None, grant.amount_nano, True) if grant.created else (grant.amount_nano, grant.amount_nano, False)

        return await self._audited(call, entry, outcome)

    async def revoke_grant(self, user: str, grant_id: str, *, reason: str | None = None, actor: str = LIBRARY) -> Grant:
        """Take back what is left of a grant (what was spent stays spent). Idempotent; audited
        (see ``grant_credit``); an unknown grant is ``UnknownGrant``."""
        call = self.core.revoke_grant(user, grant_id)
        entry = self._audit_entry(actor, audit.REVOKE_GRANT, None, user, call.args[0], None, reason)

        def outcome(done: tuple[Grant, bool]) -> tuple[int | None, int | None, bool]:
            grant, revoked = done
            return (grant.revoked_nano, 0, True) if revoked else (0, 0, False)

        grant, _ = await self._audited(call, entry, outcome)
        return grant

    async def set_plan_credit(self, user: str, credit: Any, *, actor: str = LIBRARY) -> PlanResult:
        """Set ``user``'s plan: the monthly credit (CNY) every month uses unless it has its own
        (``set_monthly_credit``); ``None`` returns the user to the default. Audited (see
        ``grant_credit``)."""
        call = self.core.set_plan(user, credit)
        entry = self._audit_entry(actor, audit.SET_PLAN_CREDIT, None, user)
        entry.requested_nano = int(call.args[0]) if call.args[0] else None

        def outcome(result: PlanResult) -> tuple[int | None, int | None, bool]:
            return result.before_nano, result.plan_credit_nano, result.before_nano != result.plan_credit_nano

        return await self._audited(call, entry, outcome)

    async def get_grants(self, user: str) -> list[Grant]:
        """Every grant of ``user``, live ones first in draw-down order, then the spent, expired and
        revoked ones (``live`` on the meter's clock)."""
        return list((await self.run(self.core.stats(user, 0))).grants)

    async def get_audit(self, user: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """``user``'s credit changes from the audit trail, newest first (``history`` needed)."""
        user = validate_user(user)
        if not isinstance(self.history, AuditSink):
            raise ConfigError("this meter has no history store: the audit trail is in QUOTA_HISTORY_URL")
        return await to_thread(self.history.read_audit, user, limit)

    def _audit_entry(
        self,
        actor: str,
        action: str,
        month: str | None,
        user: str,
        grant_id: str | None = None,
        requested_nano: int | None = None,
        reason: str | None = None,
    ) -> AuditEntry:
        return AuditEntry(
            self.core.clock(), validate_actor(actor), action, user, month, grant_id, requested_nano, reason
        )

    async def _audited(
        self, call: ScriptCall[R], entry: AuditEntry, outcome: Callable[[R], tuple[int | None, int | None, bool]]
    ) -> R:
        """Run a credit change between the two steps of its audit row (quota._audit)."""
        sink = self.history
        if not isinstance(sink, AuditSink):
            return await self.run(call)  # no history store: unaudited (docs/OPERATIONS.md)
        try:
            audit_id = await to_thread(sink.audit_begin, entry)
        except QuotaError as exc:
            raise AuditUnavailable(
                f"{entry.action} for {entry.user} was not made: its audit row could not be written ({exc})"
            ) from exc
        try:
            result = await self.run(call)
        except BaseException:
            await self._audit_finish(sink, audit_id, audit.FAILED, None, None)
            raise
        before, after, changed = outcome(result)
        await self._audit_finish(sink, audit_id, audit.DONE if changed else audit.UNCHANGED, before, after)
        return result

    @staticmethod
    async def _audit_finish(sink: AuditSink, audit_id: int, status: str, before: int | None, after: int | None) -> None:
        try:
            await to_thread(sink.audit_finish, audit_id, status, before, after)
        except QuotaError as exc:  # the change stands; its row stays pending with what was asked
            log.error("audit row %s stays pending (outcome %s not written): %s", audit_id, status, exc)

    async def get_token_stats(self, user: str, *, months: int | None = None, exact: bool = False) -> dict[str, Any]:
        """The seed's stats structure: this month, per model, and the history by month (``months``
        of it; default ``QUOTA_HISTORY_MONTHS``). Amounts are JSON numbers (floats whose repr is
        the exact amount: ``json.dumps`` it as it is); with ``exact=True`` they are ``Decimal``
        CNY, and ``percent_used`` a ``Decimal`` too: the same keys, for arithmetic in Python.
        When the SQL history does not answer, the answer comes from Redis alone (the live month,
        and the past months Redis still holds) with ``history_unavailable: True``; Redis being
        away is still ``StorageUnavailable``."""
        stats_call = self.core.stats(user, months)
        archived = None
        history_down = False
        if self.history is None:
            live = await self.run(stats_call)
        else:
            # The live months and the archive epoch in one pipeline: archived months read at the
            # same epoch are reused without SQL (quota._stats.ArchiveCache says why that is exact).
            live_reply, epoch_reply = await self.run_many([stats_call, self.core.archive_epoch()])
            error = error_of(live_reply, self.where)
            if error is not None:
                raise error
            with storage_errors(self.where):
                live = stats_call.parse(live_reply)
            epoch = None if isinstance(epoch_reply, Exception) else self.core.archive_epoch().parse(epoch_reply)
            wanted = [m.month for m in live.months[1:]]
            archived = self._archives.get(user, wanted, epoch)
            if archived is None:
                try:
                    loaded = await to_thread(self.history.load_months, user, wanted)
                    self._archives.put(user, wanted, epoch, loaded)
                    archived = loaded
                except StorageUnavailable as exc:  # the live month never depends on the archive
                    log.warning("token stats of %s without the history: %s", user, exc)
                    history_down = True
        stats = self.core.token_stats(user, live, archived, exact=exact)
        if history_down:
            stats["history_unavailable"] = True
        return stats

    # --- the operator's view: corrections (quota._adjust) --------------------------------------

    async def adjust(
        self,
        user: str,
        model_id: str,
        *,
        adjustment_id: str,
        reason: str,
        cost: Any = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        calls: int = 0,
        month: str | None = None,
        actor: str | None = None,
    ) -> Adjustment:
        """Correct ``user``'s ``month`` (default: the current one) for ``model_id`` by signed
        amounts (``cost`` in CNY), atomically, once per ``adjustment_id`` (the same id with the
        same amounts and reason again changes nothing; with others it is ``RequestConflict``).
        A counter that would go below zero is ``InvalidInput`` and nothing changes. On a system
        model the cost also moves the month's use of the credit. Logged with its id, reason and
        ``actor`` (quota._adjust.audit_adjustment) and audited as the credit changes are (action
        ``adjust``, the model's cost before and after: see ``grant_credit``; when its audit row can
        not be written it is not made, ``AuditUnavailable``); listed by ``adjustments``."""
        user = validate_user(user)
        month = self.core.current_month() if month is None else validate_month(month)
        call = adjust_call(
            self.core,
            user,
            model_id,
            adjustment_id=adjustment_id,
            reason=reason,
            cost=cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            calls=calls,
            month=month,
            actor=actor,
        )
        result = await self._audited(call, adjustment_audit_entry(call, user, month, self.core.clock()), audit_outcome)
        audit_adjustment(result)
        return result

    async def adjustments(self, user: str, month: str | None = None) -> list[Adjustment]:
        """The adjustments of ``user``'s ``month`` (default: the current one), oldest first."""
        user = validate_user(user)
        month = self.core.current_month() if month is None else validate_month(month)
        key = self.core.keys.adjustments_key(user, month)
        with storage_errors(self.where):
            here = self._clients.here()
            if not here.start.ready:
                await here.start.wait()
            try:
                raw = await here.client.hgetall(key)
            except LOST_CONNECTION as exc:
                raise lost_connection(exc) from exc
        return adjustments_from_hash(user, month, raw, self.prices.is_system)

    # --- the operator's view: month reports -----------------------------------------------------

    async def month_report(
        self,
        month: str | None = None,
        *,
        top: int | None = None,
        sort: str = "cost",
        progress: Callable[[int], None] | None = None,
    ) -> MonthReport:
        """Who spent what in ``month`` (default: the current UTC month): iterate the answer for
        one row per user (``UserRow``) in ``sort`` order (``cost``, ``system_cost``,
        ``custom_cost``, ``share``, ``tokens``, ``calls``: highest first; ``user``), the first
        ``top`` only when given; its ``summary`` has the totals, per model, and the users over
        80 % and 100 % of their credit (quota._report).

        The live month is read from Redis without blocking it: SCAN with a small COUNT on every
        primary, HGETALL pipelined per page, never KEYS. A past month is read from the SQL
        history and merged with whatever of it is still in Redis, each generation once. The read
        is kept ``QUOTA_REPORT_CACHE_S`` (30 s) for the next report or page of the same month.
        ``progress(user_months_read)`` is called after each page read from Redis."""
        data = await self.month_data(month, progress=progress)
        return data.report(sort=sort, top=top)

    async def month_data(
        self, month: str | None = None, *, progress: Callable[[int], None] | None = None, fresh: bool = False
    ) -> MonthData:
        """The month's summary and rows (cached, see ``month_report``), for paging:
        ``data.page(sort=..., limit=..., cursor=...)``. ``fresh`` reads again whatever is cached."""
        month = self.core.current_month() if month is None else validate_month(month)
        data = None if fresh else self._reports.get(month)
        if data is None:
            data = await self._read_month(month, progress)
            self._reports.put(month, data)
        return data

    async def _read_month(self, month: str, progress: Callable[[int], None] | None) -> MonthData:
        current = self.core.current_month()
        builder = MonthReportBuilder(month, self.prices, self.settings.credit_nano, current=month == current)
        archive = self.history if month < current else None
        unreadable = read = 0
        live: dict[str, MonthUsage] = {}
        async for page in prefetch(self.month_hashes(month)):
            for user, raw, plan in page:
                if archive is not None:
                    try:
                        live[user] = MonthUsage.from_hash(month, raw)
                        if plan is not None:
                            builder.plans[user] = plan
                        continue
                    except ValueError:
                        pass
                elif builder.add_hash(user, raw, plan):
                    continue
                unreadable += 1
                log.warning("month report: %s's hash of %s has a field that is not an integer; left out", user, month)
            read += len(page)
            if progress is not None:
                progress(read)
        if archive is None:
            return builder.finish(sources=("redis",), unreadable=unreadable, now=self.core.clock())

        def add_archived() -> None:
            # Redis was read first: the dump commits to SQL before it deletes from Redis, so in
            # this order nothing falls between the two reads (as in get_token_stats).
            for rows in archive.iter_month_rows(month):
                builder.add_archived(rows, live)

        await to_thread(add_archived)
        for user, usage in live.items():
            builder.add_usage(user, usage, builder.plans.get(user))
        return builder.finish(sources=("redis", "sql"), unreadable=unreadable, now=self.core.clock())

    async def month_usage(self, month: str | None = None) -> AsyncIterator[list[tuple[str, MonthUsage]]]:
        """Every user-month of ``month`` as pages of ``(user, MonthUsage)``, merged with the
        archive as ``month_report`` does, in no particular order: what an export streams.
        Memory holds one page (and, for a past month, what of it is still in Redis); hashes
        that do not parse are left out and logged."""
        month = self.core.current_month() if month is None else validate_month(month)
        archive = self.history if month < self.core.current_month() else None
        live: dict[str, MonthUsage] = {}
        async for page in prefetch(self.month_hashes(month)):
            parsed = []
            for user, raw, plan in page:
                try:
                    usage = MonthUsage.from_hash(month, raw)
                    if usage.credit_nano is None and plan is not None:
                        usage.credit_nano = plan  # the credit in force (the CSV's user_monthly_credit)
                except ValueError:
                    log.warning("month export: %s's hash of %s has a field that is not an integer", user, month)
                    continue
                if archive is None:
                    parsed.append((user, usage))
                else:
                    live[user] = usage
            if parsed:
                yield parsed
        if archive is None:
            return
        chunks = archive.iter_month(month)
        try:
            while True:
                chunk = await to_thread(next, chunks, None)
                if chunk is None:
                    break
                yield [(user, merge_month(month, live.pop(user, None), parts)) for user, parts in chunk]
        finally:
            chunks.close()
        if live:
            yield list(live.items())

    async def month_hashes(self, month: str) -> AsyncIterator[list[tuple[str, Any, int | None]]]:
        """Pages of ``(user, HGETALL reply as a dict, plan credit in nano-CNY or None)`` of every
        hash of ``month`` in Redis, primary by primary: ``SCAN MATCH <prefix>:{*}:<month> COUNT n
        TYPE hash`` (n from 200 to 2000, so that a page holds about 200 keys:
        quota._report.next_scan_count), and the page's HGETALLs and GETs of the users' plans
        (``<prefix>:{<user>}:plan``, in the user's slot: on the same node) pipelined together with
        the SCAN of the next page (one round trip per page, sent and read raw: see ``_read_page``).
        A plan that is not an integer is left out (logged): the month reads with the default. No command
        holds Redis for long (SLOWLOG stays empty at 10 ms: tests/test_report.py); never KEYS.
        With ``QUOTA_REPORT_REDIS_SHARE`` below 1 it pauses after each page (quota._report.pause_after)."""
        month = validate_month(month)
        pattern = self.core.keys.month_pattern(month)
        user_of = self.core.keys.month_key_users(month)
        share = self.settings.report_redis_share
        for where, node in await self._primaries():
            count = SCAN_COUNT_MIN
            with storage_errors(where):
                try:
                    cursor, keys = await node.scan(0, match=pattern, count=count, _type="hash")
                except LOST_CONNECTION as exc:
                    raise lost_connection(exc) from exc
            while keys or int(cursor):
                scan = None
                if int(cursor):
                    count = next_scan_count(count, len(keys))
                    scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", count, "TYPE", "hash")
                with storage_errors(where):
                    try:
                        sent = time.monotonic()
                        replies, following = await _read_page(node, keys, scan, plan_keys(keys))
                        pause = pause_after(time.monotonic() - sent, share)
                    except LOST_CONNECTION as exc:
                        raise lost_connection(exc) from exc
                page = []
                for key, reply, plan in zip(keys, replies, replies[len(keys) :]):
                    user = user_of(key)
                    if user is None or isinstance(reply, Exception) or not reply:
                        continue  # not a user-month key after all, or deleted since the SCAN saw it
                    if not isinstance(reply, dict):  # RESP2: a flat list of field, value, ...
                        pairs = iter(reply)
                        reply = dict(zip(pairs, pairs))
                    page.append((user, reply, plan_nano(user, plan)))
                if page:
                    yield page
                if pause:
                    await sleep(pause)  # QUOTA_REPORT_REDIS_SHARE: leave Redis to the hot path
                cursor, keys = following if following is not None else (0, [])

    async def _primaries(self) -> list[tuple[str, Any]]:
        """``(name, plain client)`` of every primary: a SCAN on a cluster must visit each."""
        here = self._clients.here()
        if not isinstance(here.client, ClusterClient):
            return [(self.where, here.client)]
        with storage_errors(self.where):
            await here.start.before_batch()
            return [(node.name, here.nodes.get(node.name)) for node in here.client.get_primaries()]

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless Redis answers (every node of a cluster)."""
        with storage_errors(self.where):
            here = self._clients.here()
            if not here.start.ready:
                await here.start.wait()
            await here.client.ping()

    def get_model_cost_config(self, model_id: str) -> dict[str, Any]:
        """The seed's per-model config, of the price in force at the meter clock's now."""
        return self.core.price_for(model_id).as_config()

    # --- agent-worker integration (quota.Turn) --------------------------------------------------

    def turn(
        self,
        user: str,
        model_id: str,
        *,
        hold: Any = None,
        on_unavailable: str | None = None,
        on_warning: Any = None,
    ) -> AsyncTurn:
        """``async with ameter.turn(user, model_id) as turn:`` admits the turn (QuotaExceeded when
        over) and counts every call of the reply with ``turn.record(...)`` / ``turn.stream(...)``.

        On a system model the admission reserves ``hold`` CNY of the credit for this turn (default
        ``QUOTA_TURN_HOLD``: ``auto``, learned from the user's recent turns on the model), so that
        many turns started at once cannot all spend the same remaining credit; the turn's records
        draw it down and its end gives back the rest (docs/INTEGRATION.md, "Turn holds").

        ``on_warning(event)`` (awaited) gets the ``quota_warning`` event at once when one of the turn's
        records crosses an alert threshold, to push to the browser (docs/ALERTS.md)."""
        return AsyncTurn(self, user, model_id, on_unavailable=on_unavailable, hold=hold, on_warning=on_warning)

    async def replay_spool(self) -> ReplayReport:
        """Send records spooled while Redis was away (also done after each turn, when due)."""
        return await replay(self)

    # --- I/O -------------------------------------------------------------------------------------

    async def run(self, call: ScriptCall[R]) -> R:
        """Send one prepared call (quota._core) and parse its reply; see quota._runner."""
        with storage_errors(self.where):
            here = self._clients.here()
            if not here.start.ready:
                await here.start.wait()
            batcher = here.batcher  # the asyncio meter's auto-pipeline; None: off (and always in sync)
            if batcher is None:
                return call.parse(await self._evalsha(here.client, call))
            return call.parse(await batcher.submit(call))

    @staticmethod
    async def _evalsha(client: Any, call: ScriptCall[Any]) -> Any:
        """Run ``call``; on a cluster, resend it while its slot is busy (see slot_busy_pause)."""
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return await AsyncMeter._evalsha_once(client, call)
            except REDIS_ERRORS as exc:
                pause = slot_busy_pause(exc, attempt, time.monotonic() - started)
                if pause is None:
                    raise
                await sleep(pause)
        raise AssertionError("unreachable")

    @staticmethod
    async def _evalsha_once(client: Any, call: ScriptCall[Any]) -> Any:
        try:
            try:
                return await send_script(client, call)
            except NoScriptError:  # restart, failover or SCRIPT FLUSH emptied the script cache
                # EVAL carries the source: a flush can not come between loading and running it.
                return await send_script(client, call, with_source=True)
        except LOST_CONNECTION as exc:
            raise lost_connection(exc) from exc

    async def run_many(self, calls: list[ScriptCall[Any]]) -> list[Any]:
        """Send calls pipelined, one pipeline per node; one raw reply or exception per call."""
        if not calls:
            return []
        with storage_errors(self.where):
            here = self._clients.here()
        return await self._run_plan(here, calls)

    async def _run_plan(self, here: OnLoop, calls: list[ScriptCall[Any]]) -> list[Any]:
        """Drive the batch plan (quota._batch) for ``calls`` on ``here``'s client."""
        node_of = None
        with storage_errors(self.where):
            if isinstance(here.client, ClusterClient):
                await here.start.before_batch()
                node_of = here.nodes.node_of
        plan = plan_batch(calls, node_of)
        with storage_errors(self.where):
            try:
                step = next(plan)
                while True:
                    step = plan.send(await self._perform(step, here))
            except StopIteration as done:
                replies: list[Any] = done.value  # the plan's return value: one reply per call
                return replies

    async def _perform(self, step: Step, here: OnLoop) -> Any:
        """Do one I/O step of a batch plan (see quota._batch); errors are outcomes, not raised."""
        if isinstance(step, SendOne):
            try:
                return await self._evalsha(here.client, step.call)
            except REDIS_ERRORS as exc:
                return exc
        try:
            return await send_scripts(here.nodes.get(step.node), step.calls, step.with_source)
        except REDIS_ERRORS as exc:
            return exc
        except LOST_CONNECTION as exc:
            return lost_connection(exc)


_HGETALL = b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n"
_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n"


async def _read_page(
    node: Any, keys: list[Any], scan: tuple[Any, ...] | None, gets: Sequence[bytes] = ()
) -> tuple[list[Any], Any]:
    """HGETALL of each of ``keys``, GET of each of ``gets`` and then ``scan`` (the next SCAN, or
    None), sent as one packed buffer on one of ``node``'s connections; the raw replies, the
    HGETALLs' then the GETs' (an error reply is its exception, in its place), and the SCAN's
    ``[cursor, keys]`` (None without one).

    Why not a redis-py pipeline: at a million user-months the report was bound by the client's CPU,
    and most of it was the pipeline's per-command work (packing each command, queueing it, a
    response callback turning each reply into a dict). Packing ``HGETALL`` by hand and reading the
    replies straight from the parser (hiredis) took the read from about 10 to about 4 µs of client
    CPU per user-month (bench/report.py; docs/BENCHMARKS.md, "Month reports")."""
    pool = node.connection_pool
    conn = await pool.get_connection()
    try:
        names = [k if isinstance(k, bytes) else k.encode() for k in keys]
        packed = [b"".join(_HGETALL % (len(name), name) for name in names)]
        if gets:
            packed.append(b"".join(_GET % (len(name), name) for name in gets))
        if scan is not None:
            packed += conn.pack_command(*scan)
        await conn.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        for _ in range(len(keys) + len(gets)):
            try:
                replies.append(await conn.read_response(disable_decoding=True))
            except ResponseError as exc:  # e.g. WRONGTYPE: the key was replaced since the SCAN
                replies.append(exc)
        following = None if scan is None else await conn.read_response(disable_decoding=True)
    except BaseException:
        await conn.disconnect()  # replies may be left unread: never hand this connection out again
        raise
    finally:
        await pool.release(conn)
    return replies, following
