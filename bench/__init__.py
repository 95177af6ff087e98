"""Benchmarks for quota, each measured beside a peer or a ceiling in the same run.

(Other areas keep their own scripts here too, e.g. ``bench_api.py``; this docstring covers the
core metering benchmark of issue 2.)

Run everything with ``.venv/bin/python -m bench.core`` (see ``bench/core.py``). The modules:

- ``workloads.py``: one class per thing measured (the Meter, raw redis-py EVALSHA, ``limits``,
  the seed's JSON read-modify-write, ...), each doing one unit of work per ``step()``.
- ``driver.py``: runs a workload in N processes for a fixed time and reads the server's
  INFO commandstats for the same window.
- ``server_ceiling.py``: ``redis-benchmark`` running the project's own ``record.lua``.
- ``memory.py``: bytes per user-month (MEMORY USAGE and used_memory growth).
- ``report.py``: the table, and its section in docs/BENCHMARKS.md.
"""
