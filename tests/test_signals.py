"""Signals in this process: the first stops training at a step boundary (a flag), the second
at once, naming the signal; outside the loop SIGTERM raises like Ctrl-C; handlers come back."""

from __future__ import annotations

import os
import signal

import pytest

from hvbench.signals import StopOnSignal, Terminated, terminate_raises


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered to this (main) thread before kill returns


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_first_signal_sets_a_flag_the_second_stops_at_once(signum: int, raised: type) -> None:
    before = signal.getsignal(signum)
    with StopOnSignal() as stop:
        send(signum)
        assert stop.received == signum
        with pytest.raises(raised):
            send(signum)
    assert signal.getsignal(signum) is before


def test_sigterm_outside_the_loop_raises_and_the_loop_takes_over_inside_it() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with terminate_raises():
        with StopOnSignal() as stop:
            send(signal.SIGTERM)  # inside training: only the flag
        assert stop.received == signal.SIGTERM
        with pytest.raises(Terminated) as err:
            send(signal.SIGTERM)
        assert err.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
