"""Ctrl-C at the end of a step: loops that keep state (a training checkpoint, an attack's best
iterate) finish the step they are in, keep what they have, then stop with KeyboardInterrupt.

A step is left whole, so what is kept is exactly the state after a step (a resumed training run
stays bit-identical); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading


class StepInterrupts:
    """``with StepInterrupts() as interrupts:`` a first Ctrl-C (SIGINT) only sets
    ``interrupts.pending``: the loop checks it after each step, keeps its state and calls
    :meth:`stop`. A second Ctrl-C raises KeyboardInterrupt at once, and one the loop did not see
    is raised when the block ends.

    It acts in the main thread only, and only where Ctrl-C raises KeyboardInterrupt (Python's
    default handler): a worker that ignores SIGINT, or a program with its own handler, is left
    as it is (``pending`` then stays false).
    """

    def __init__(self) -> None:
        self.pending = False
        self._previous = None

    def __enter__(self) -> StepInterrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum, _frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def stop(self) -> None:
        """Raise the KeyboardInterrupt that was held back (call it once the state is kept)."""
        self._restore()
        self.pending = False
        raise KeyboardInterrupt

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __exit__(self, exc_type, _exc, _tb) -> None:
        self._restore()
        if self.pending and exc_type is None:
            self.pending = False
            raise KeyboardInterrupt


__all__ = ["StepInterrupts"]
