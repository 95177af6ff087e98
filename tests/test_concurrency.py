"""No lost update, no double count: 8 processes x 5,000 records on one user give exact totals."""

import multiprocessing as mp

import pytest

from quota import Meter

PROCESSES = 8
RECORDS = 5000


def worker(url: str, worker_id: int, batch: bool) -> None:
    meter = Meter.from_url(url, prefix="conc")
    if batch:
        for start in range(0, RECORDS, 250):
            meter.update_token_usage_many(
                [
                    dict(
                        user="hot",
                        model_id="system_deepseek",
                        input_tokens=1 + (i % 7),
                        output_tokens=i % 3,
                        request_id=f"w{worker_id}-{i}",
                    )
                    for i in range(start, start + 250)
                ]
            )
    else:
        for i in range(RECORDS):
            meter.update_token_usage("hot", "system_deepseek", 1 + (i % 7), i % 3, request_id=f"w{worker_id}-{i}")
    meter.close()


def expected() -> tuple[int, int, int]:
    tin = sum(1 + (i % 7) for i in range(RECORDS)) * PROCESSES
    tout = sum(i % 3 for i in range(RECORDS)) * PROCESSES
    return tin, tout, tin * 1000 + tout * 2000


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True], ids=["single", "pipelined"])
def test_eight_processes_on_one_user_are_exact(real_backend, batch):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(real_backend.url, n, batch)) for n in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    tin, tout, cost = expected()
    meter = Meter.from_url(real_backend.url, prefix="conc")
    stats = meter.core.stats("hot", 0)
    month = meter.run(stats).current  # this month (the clock's), as stats.lua read it
    model = month.models["system_deepseek"]
    assert (model.input_tokens, model.output_tokens, model.cost_nano, model.calls) == (
        tin,
        tout,
        cost,
        PROCESSES * RECORDS,
    )
    assert month.system_used_nano == cost
    # a second pass with the same request ids counts nothing more
    worker(real_backend.url, 0, batch)
    again = meter.run(meter.core.stats("hot", 0)).current
    assert again.models["system_deepseek"].calls == PROCESSES * RECORDS
    meter.close()
