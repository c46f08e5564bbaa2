"""Progress of a ``fastopt bench`` run, on stderr (results stay on stdout).

On a terminal, with tqdm installed (the ``bench`` extra), one bar counts the run's steps (a cell of
the step table, a table of the full run) and shows the latest message beside it; otherwise every
message is a line on stderr, as a log file or a CI job wants it.
"""
import contextlib
import sys


def _tqdm_class(stream):
    """tqdm's bar class when ``stream`` is a terminal and tqdm is installed, else None."""
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """``log(message)`` says what the run is doing; ``step(message)`` also counts one unit of
    ``total`` done. ``paused()`` clears the bar while results are printed to stdout."""

    def __init__(self, total, stream=None, bar=None):
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.done = 0
        self._bar_class = _tqdm_class(self.stream) if bar is None else (bar or None)
        self._bar = None
        self._start_bar()

    def _start_bar(self):
        # (a bar is drawn once there is a total: tqdm draws nothing for a total of 0)
        if self._bar is None and self._bar_class is not None and self.total > 0:
            self._bar = self._bar_class(total=self.total, initial=self.done, file=self.stream,
                                        unit="step", leave=False, dynamic_ncols=True, mininterval=0.2,
                                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                                   "[{elapsed}<{remaining}]{postfix}")

    @property
    def interactive(self):
        """True when the progress is a bar rather than lines."""
        return self._bar_class is not None

    def add(self, units):
        """Count ``units`` more steps in the total (a table whose size is known late)."""
        self.total += units
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        self._start_bar()

    def log(self, message):
        if self._bar is None and self._bar_class is not None:
            print(message, file=self.stream, flush=True)     # before the bar: a line
        elif self._bar is not None:
            self._bar.set_postfix_str(message.strip()[:80])
        else:
            print(message, file=self.stream, flush=True)

    def step(self, message):
        """One unit done: the line ``[  3/30] message``, or the bar advanced."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(message.strip()[:80], refresh=False)
            self._bar.update(1)
        else:
            width = len(str(self.total))
            print(f"[{self.done:{max(width, 3)}d}/{self.total}] {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def paused(self):
        """Clear the bar while stdout is written (both may be the same terminal)."""
        if self._bar is None:
            yield
            return
        self._bar.clear()
        try:
            yield
        finally:
            sys.stdout.flush()
            self._bar.refresh()

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._bar_class = None            # what follows is logged as lines
