"""StopRequest turns Ctrl-C and SIGTERM into a flag the training loops check between steps."""

import os
import signal

import pytest

from receler.stop_request import StopRequest


def _placeholder(signum, frame):
    raise AssertionError(f"signal {signum} reached the handler StopRequest should have replaced")


@pytest.mark.parametrize("signum, reason", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_the_first_signal_sets_the_flag_and_the_second_interrupts(signum, reason):
    # A handler of our own first, to check it is restored (and that no signal reaches it meanwhile).
    outside = signal.signal(signum, _placeholder)
    try:
        with StopRequest() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signum)
            assert stop.requested and stop.reason == reason
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
        assert signal.getsignal(signum) is _placeholder
    finally:
        signal.signal(signum, outside)


def test_an_inherited_ignore_is_replaced_while_the_loop_runs_and_restored_after():
    """A job started with `&` from a script ignores SIGINT; `kill -INT` should still stop it with its state saved."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.reason == "Ctrl-C"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
