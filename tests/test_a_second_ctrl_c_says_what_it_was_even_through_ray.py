"""A second Ctrl-C stops the job at once with `KeyboardInterrupt("Ctrl-C twice: ...")`, which the final status and
the log carry. When the signal lands inside one of Ray's own waits, Ray raises a bare KeyboardInterrupt of its
own instead (seen in a CI rehearsal: status `stop_reason` "Ctrl-C", the log without the reason); the job's
signal handling still ends with the reason."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest

from orchestration.driver import StopSignals


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(operator=SimpleNamespace(stop_requested=False))


def _wait_for_the_handler() -> None:
    time.sleep(1)  # the handler runs between bytecodes of this thread, within this sleep


def test_a_second_ctrl_c_turned_bare_by_ray_still_names_itself():
    trainer = _trainer()
    with pytest.raises(KeyboardInterrupt, match="^Ctrl-C twice: stopped at once") as raised:
        with StopSignals(trainer) as signals:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_the_handler()
            assert trainer.operator.stop_requested and signals.reason == "Ctrl-C"
            try:
                os.kill(os.getpid(), signal.SIGINT)
                _wait_for_the_handler()
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # what Ray's wait raises in its place
    assert isinstance(raised.value.__cause__, KeyboardInterrupt)  # the traceback of where it landed is kept
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_first_ctrl_c_only_asks_for_a_stop_at_the_step_boundary():
    trainer = _trainer()
    with StopSignals(trainer) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_the_handler()
    assert trainer.operator.stop_requested and signals.reason == "Ctrl-C" and signals.interrupted is None
