"""Work handed to the training thread: run in order by the loop, at once outside it, cancelled at its end."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from napari_msd.training.between_steps import BetweenSteps


def test_outside_a_loop_a_call_runs_at_once_on_the_callers_thread():
    gate = BetweenSteps()
    future = gate.submit(threading.get_ident)
    assert future.done() and future.result() == threading.get_ident()


def test_queued_calls_run_in_order_on_the_serving_thread():
    gate = BetweenSteps()
    gate.open()
    ran: list[tuple[int, int]] = []
    futures = [gate.submit(lambda k=k: ran.append((k, threading.get_ident())) or k) for k in range(3)]
    assert not any(f.done() for f in futures) and not ran
    server = threading.Thread(target=gate.serve)
    server.start()
    server.join()
    assert [k for k, _ in ran] == [0, 1, 2] and {t for _, t in ran} == {server.ident}
    assert [f.result() for f in futures] == [0, 1, 2]
    assert gate.serve() == 0


def test_an_error_goes_to_the_caller_not_the_loop():
    gate = BetweenSteps()
    gate.open()
    future = gate.submit(lambda: 1 / 0)
    assert gate.serve() == 1
    with pytest.raises(ZeroDivisionError):
        future.result()


def test_closing_cancels_what_is_still_queued_and_what_comes_later():
    """After the loop, the end of training still computes: a live preview requested by the last step's event
    must not run beside it on the caller's thread (it did, now and then, in the dock tests)."""
    gate = BetweenSteps()
    gate.open()
    queued = gate.submit(lambda: "never")
    gate.close()
    ran = []
    late = gate.submit(lambda: ran.append(1))
    for future in (queued, late):
        with pytest.raises(CancelledError):
            future.result(timeout=1)
    assert not ran
    gate.finish()  # what followed the loop is done: calls run at once again
    assert gate.submit(lambda: "now").result(timeout=1) == "now"
    gate.open()  # a loop that starts again queues again
    assert not gate.submit(lambda: "queued").done() and gate.serve() == 1


def test_a_call_cancelled_by_its_caller_is_skipped():
    gate = BetweenSteps()
    gate.open()
    ran = []
    future = gate.submit(lambda: ran.append(1))
    assert future.cancel()
    assert gate.serve() == 0 and not ran
