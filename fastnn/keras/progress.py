"""The training progress bar: batch loss *and* the epoch's running average, steps/s, then the
validation figures at the end of the epoch (Keras shows only the running average).

The bar redraws in place (carriage returns) only on a terminal or in a notebook. Into a file or a
pipe (a CI log, `nohup`, `| tail`) verbose=1 writes one finished line an epoch, as Keras does:
redrawn ten times a second, each epoch's line of such a log held some sixty bars."""
from __future__ import annotations

import sys
import time


def _interactive(stream) -> bool:
    """True where a carriage return redraws the line: a terminal, or a Jupyter kernel's stream."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    def __init__(self, steps: int, epoch: int, epochs: int, verbose: int = 1, stream=None, width: int = 24):
        self.steps, self.verbose, self.width = steps, verbose, width
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.dynamic = _interactive(self.stream)
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", file=self.stream)

    def _rate(self, step):
        elapsed = time.perf_counter() - self.start
        return elapsed, (step / elapsed if elapsed > 0 else 0.0)

    def update(self, step: int, batch_loss: float, logs: dict):
        if self.verbose != 1 or not self.dynamic:
            return
        now = time.perf_counter()
        if step < self.steps and now - self._last_draw < 0.1:  # redraw at most 10 times a second
            return
        self._last_draw = now
        elapsed, rate = self._rate(step)
        done = int(self.width * step / max(self.steps, 1))
        bar = "=" * max(done - 1, 0) + (">" if done < self.width else "=") + "." * (self.width - done)
        metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        self.stream.write(f"\r{step}/{self.steps} [{bar}] {elapsed:.1f}s {rate:.1f} steps/s - "
                          f"batch loss: {batch_loss:.4f} - {metrics}   ")
        self.stream.flush()

    def finish(self, logs: dict):
        if not self.verbose:
            return
        elapsed, rate = self._rate(self.steps)
        metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        if self.verbose == 1:
            bar = "=" * self.width
            line = f"{self.steps}/{self.steps} [{bar}] {elapsed:.1f}s {rate:.1f} steps/s - {metrics}"
            self.stream.write(f"\r{line}   \n" if self.dynamic else f"{line}\n")
        else:
            self.stream.write(f"{self.steps}/{self.steps} - {elapsed:.1f}s - {rate:.1f} steps/s - {metrics}\n")
        self.stream.flush()
