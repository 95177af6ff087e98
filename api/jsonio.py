"""Flask's JSON provider, with one change: a body nested too deeply for the parser is bad input.

Python's ``json`` decoder recurses once per nesting level and raises ``RecursionError`` (not a
``ValueError``) at about a thousand levels, so ``request.get_json()`` let it escape as a 500.
Turned into a ``ValueError`` here, it takes werkzeug's path for malformed JSON: 400 ``bad_request``.
No real request nests deeper than a few levels.
"""

from __future__ import annotations

import threading
from typing import Any

from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

HISTORY = "history"  # the stats' last key (quota._stats.build_token_stats)


class QuotaJSONProvider(DefaultJSONProvider):
    sort_keys = False
    ensure_ascii = False
    max_kept_histories = 256  # token-stats bodies: (user, months) whose history JSON is kept

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._histories: dict[Any, tuple[Any, str]] = {}
        self._lock = threading.Lock()

    def stats_response(self, stats: dict[str, Any], key: Any) -> Response:
        """``jsonify(stats)`` of a token-stats answer, byte for byte, with the JSON of its
        ``history`` reused while the history is equal to the last one encoded under ``key``.

        Why: the past months are most of the body and rarely change (the library reuses the history
        it built, quota._stats.HistoryMemo), and encoding them was the largest piece of the route's
        own CPU left (about 60 of 90 µs for a year of three models). Equality is checked in full
        (``==`` on the dicts; each field always has one type, so equal values encode alike), and
        the body is spliced only where it is the same text: compact separators (not in debug mode),
        ``history`` the last key."""
        history = stats.get(HISTORY)
        if self._app.debug or self.compact is False or not history or next(reversed(stats)) != HISTORY:
            return self.response(stats)
        kept = self._histories.get(key)
        if kept is not None and kept[0] == history:
            encoded = kept[1]
        else:
            encoded = self.dumps(history, separators=(",", ":"))
            with self._lock:
                self._histories.pop(key, None)
                while len(self._histories) >= self.max_kept_histories:
                    self._histories.pop(next(iter(self._histories)))
                self._histories[key] = (history, encoded)
        head = {k: v for k, v in stats.items() if k != HISTORY}
        text = self.dumps(head, separators=(",", ":"))
        body = f'{text[:-1]}{"," if head else ""}"{HISTORY}":{encoded}}}\n'
        return self._app.response_class(body, mimetype=self.mimetype)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON body is nested too deeply") from None
