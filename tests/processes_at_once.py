"""Several processes of one function started together (the tests of what concurrent trials or
drivers share: a cache, a lock, a token file)."""

from __future__ import annotations

from collections.abc import Callable


def results_of(context, target: Callable, args_list: list[tuple], *, timeout: float) -> list:
    """Start target(*args, queue) once per args in a multiprocessing `context`; each puts one
    result on the queue. Returns the results in the order they arrived, after every process
    exited with 0 (an AssertionError naming the exit codes otherwise)."""
    queue = context.Queue()
    procs = [context.Process(target=target, args=(*args, queue)) for args in args_list]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs), [p.exitcode for p in procs]
    return results
