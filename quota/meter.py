"""``Meter``: the synchronous client. Only I/O lives here; the rules are in ``core.py``."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .batch import MAX_RELOADS, evalsha_args, group_by, missing_scripts, needs_reroute
from .config import Settings
from .connect import describe_client, error_of, settings_with, split_options, split_url, storage_errors
from .core import Clock, MeterCore, ScriptCall
from .errors import BatchError
from .results import CreditResult, QuotaCheck, UsageResult


class Meter:
    """Counts LLM calls per user and model in Redis and checks the monthly credit.

    ``client`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster``. Settings come from the
    environment (see ``quota.config``) unless given; keyword options override single settings
    (``prefix=``, ``monthly_credit=`` in CNY, ``dedupe_ttl_s=``, ``prices=``, ``history_months=``).
    ``clock`` returns an aware datetime; tests pin it to any instant.
    """

    def __init__(self, client: Any, *, settings: Settings | None = None, clock: Clock | None = None,
                 history: Any = None, **overrides: Any):
        self.core = MeterCore(settings_with(settings, overrides), clock)
        self.client = client
        self.history = history
        self._where = describe_client(client)

    @classmethod
    def from_url(cls, url: str | None = None, *, cluster: bool | None = None, **options: Any) -> "Meter":
        """A Meter on ``url`` (default ``REDIS_URL``): ``redis://``, ``rediss://``, ``unix://``,
        or ``redis+cluster://host:port`` for a cluster. Other options go to redis-py."""
        own, client_options = split_options(options)
        url, is_cluster = split_url(url, cluster)
        if is_cluster:
            client = RedisCluster.from_url(url, **client_options)
        else:
            client = redis.Redis.from_url(url, **client_options)
        return cls(client, **own)

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def prices(self):  # noqa: ANN201 - PriceTable
        return self.core.prices

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations ------------------------------------------------------------------------------

    def update_token_usage(self, user: str, model_id: str, input_tokens: int, output_tokens: int, *,
                           request_id: str | None = None, price: Mapping[str, Any] | None = None,
                           estimated: bool = False) -> UsageResult:
        """Count one LLM call. Never refuses for the credit; a repeated ``request_id`` counts once."""
        return self._run(self.core.record(user, model_id, input_tokens, output_tokens,
                                          request_id=request_id, price=price, estimated=estimated))

    def update_token_usage_many(self, records: Iterable[Mapping[str, Any]]) -> list[UsageResult]:
        """Count many calls in one pipelined round trip per node; one result per record."""
        calls = self.core.record_many(records)
        replies = self._run_many(calls)
        results = [error_of(r, self._where) or c.parse(r) for c, r in zip(calls, replies)]
        if any(isinstance(r, Exception) for r in results):
            raise BatchError(results)
        return results

    def check_quota_available(self, user: str, model_id: str) -> QuotaCheck:
        """May ``user`` start a new message on ``model_id``? Custom models always may."""
        return self._run(self.core.check(user, model_id))

    def set_monthly_credit(self, user: str, credit: Any, month: str | None = None) -> CreditResult:
        """Set ``user``'s credit (CNY) for ``month`` (default: the current UTC month)."""
        return self._run(self.core.set_credit(user, credit, month))

    def get_token_stats(self, user: str, *, months: int | None = None) -> dict[str, Any]:
        """The seed's stats structure: this month, per model, and the history by month."""
        live = self._run(self.core.stats(user, months))
        archived = self.history.load_months(user, [m.month for m in live[1:]]) if self.history else None
        return self.core.token_stats(user, live, archived)

    def get_model_cost_config(self, model_id: str) -> dict[str, Any]:
        return self.core.prices.get_model_cost_config(model_id)

    # --- I/O -------------------------------------------------------------------------------------

    def _run(self, call: ScriptCall) -> Any:
        with storage_errors(self._where):
            return call.parse(self._evalsha(self.client, call))

    @staticmethod
    def _evalsha(client: Any, call: ScriptCall) -> Any:
        try:
            return client.evalsha(*evalsha_args(call))
        except NoScriptError:  # restart, failover or SCRIPT FLUSH emptied the script cache
            client.script_load(call.script.source)
            return client.evalsha(*evalsha_args(call))

    def _run_many(self, calls: list[ScriptCall]) -> list[Any]:
        if not calls:
            return []
        with storage_errors(self._where):
            if not isinstance(self.client, RedisCluster):
                return self._pipeline(self.client, calls)
            replies: list[Any] = [None] * len(calls)
            nodes = {}

            def node_of(key: str) -> str:
                node = self.client.get_node_from_key(key)
                nodes[node.name] = node
                return node.name

            for name, indexes in group_by(calls, node_of).items():
                node_client = self.client.get_redis_connection(nodes[name])
                try:
                    sub = self._pipeline(node_client, [calls[i] for i in indexes])
                except redis.exceptions.RedisError as exc:
                    sub = [exc] * len(indexes)  # rerouted one by one below
                for index, reply in zip(indexes, sub):
                    replies[index] = reply
            for index, reply in enumerate(replies):
                if needs_reroute(reply):  # slot moved or node away: the cluster client follows
                    try:
                        replies[index] = self._evalsha(self.client, calls[index])
                    except redis.exceptions.RedisError as exc:
                        replies[index] = exc
            return replies

    @staticmethod
    def _pipeline(client: Any, calls: list[ScriptCall]) -> list[Any]:
        """EVALSHA every call in one pipeline; calls whose script was missing are loaded and resent."""
        pending = list(range(len(calls)))
        replies: list[Any] = [None] * len(calls)
        for attempt in range(MAX_RELOADS + 1):
            pipe = client.pipeline(transaction=False)
            for index in pending:
                pipe.evalsha(*evalsha_args(calls[index]))
            for index, reply in zip(pending, pipe.execute(raise_on_error=False)):
                replies[index] = reply
            missing = missing_scripts([replies[i] for i in pending])
            if not missing or attempt == MAX_RELOADS:
                break
            pending = [pending[i] for i in missing]
            for script in {calls[i].script for i in pending}:
                client.script_load(script.source)
        return replies
