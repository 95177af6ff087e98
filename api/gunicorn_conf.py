"""gunicorn settings for the quota API: ``gunicorn -c gunicorn.conf.py 'quota_server:create_app()'``.

The repository's ``gunicorn.conf.py`` imports this module (so does ``-c python:quota_server.gunicorn_conf``
for an installed quota). It does three things gunicorn does not:

- **The metrics directory.** With ``PROMETHEUS_MULTIPROC_DIR`` set, it creates the directory
  (0700) before the first worker starts and empties it of the previous run's files: without it,
  a directory exported but not created made every worker die at its first metric, and one left
  from the last run added the old counters to the new ones. A worker that exits is marked dead,
  so its gauges stop counting (prometheus-client's ``mark_process_dead``).
- **Logs** with a UTC time and a level, as text or JSON (``api.logs``: QUOTA_LOG_FORMAT,
  QUOTA_LOG_LEVEL), for the app's loggers and gunicorn's own.
- **The access log** on stderr, in the same format.

Workers, the address and timeouts stay on the command line (``-w 4 -b 0.0.0.0:8000``).
"""

from __future__ import annotations

import os
from typing import Any

from .logs import logging_config
from .metrics import mark_worker_dead, prepare_multiproc_dir

logconfig_dict = logging_config()
# A month report's first read of a live month of a million user-months takes 10 to 25 s on a small
# machine (docs/BENCHMARKS.md); gunicorn's default of 30 s would kill the worker mid-read.
timeout = 120
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'  # no user agent, no referrer: no token ever lands here


def on_starting(server: Any) -> None:
    """In the master, before any worker: the metrics directory, created and emptied."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        removed = prepare_multiproc_dir(directory)
        server.log.info("metrics directory %s ready (%d old files removed)", directory, removed)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_worker_dead(worker.pid)
