"""The order in which training sees the volumes."""

from __future__ import annotations

import numpy as np


class BatchStream:
    """Endless shuffled batches of indices; epoch e is a permutation seeded by (seed, e).

    Its whole state is (epoch, position), so a resumed run sees exactly the batches it would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        """The next ``batch_size`` indices (a batch may straddle two epochs)."""
        out: list[np.ndarray] = []
        need = self.batch_size
        while need:
            take = self._order[self.position : self.position + need]
            out.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(out)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}
