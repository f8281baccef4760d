"""The CLI's progress: one tqdm bar per stage, on stderr."""

from __future__ import annotations

import sys


class Bar:
    """A ``progress(done, total, stage)`` callback drawing one tqdm bar per stage on stderr."""

    def __init__(self, prefix: str, unit: str = "batch"):
        self.prefix, self.unit, self.bar, self.stage = prefix, unit, None, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        from tqdm import tqdm

        if total <= 1:  # a single step (loading a model) needs no bar
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.prefix}: {stage}", unit=self.unit, file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
