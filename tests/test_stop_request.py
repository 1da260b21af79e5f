"""StopRequest turns Ctrl-C and SIGTERM into a flag the training loops check between steps."""

import os
import signal

import pytest

from receler.stop_request import StopRequest


@pytest.mark.parametrize("signum, reason", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_the_first_signal_sets_the_flag_and_the_second_interrupts(signum, reason):
    before = signal.getsignal(signum)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.reason == reason
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
    assert signal.getsignal(signum) is before


def test_a_signal_the_process_ignores_stays_ignored():
    """A job started with `&` from a script ignores SIGINT; its parent's choice stands."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
