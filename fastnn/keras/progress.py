"""The training progress bar: batch loss *and* the epoch's running average, steps/s, then the
validation figures at the end of the epoch (Keras shows only the running average)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, steps: int, epoch: int, epochs: int, verbose: int = 1, stream=None, width: int = 24):
        self.steps, self.verbose, self.width = steps, verbose, width
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self._last_draw = 0.0
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs}", file=self.stream)

    def _rate(self, step):
        elapsed = time.perf_counter() - self.start
        return elapsed, (step / elapsed if elapsed > 0 else 0.0)

    def update(self, step: int, batch_loss: float, logs: dict):
        if self.verbose != 1:
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
            self.stream.write(f"\r{self.steps}/{self.steps} [{bar}] {elapsed:.1f}s {rate:.1f} steps/s - {metrics}   \n")
        else:
            self.stream.write(f"{self.steps}/{self.steps} - {elapsed:.1f}s - {rate:.1f} steps/s - {metrics}\n")
        self.stream.flush()
