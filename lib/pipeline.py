"""Streaming input: batches read from the HDF5 patch arrays on demand, shuffled and augmented."""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import h5py
import keras
import numpy as np

from lib.augment import augment_batch
from lib.patches import batches_per_pass


class PatchStream(keras.utils.PyDataset):
    """Batches of patches [start, stop) of dataset.h5, read one HDF5 slice at a time.

    Patches were written in random order, so a contiguous slice is a random batch; shuffling the
    order of those slices each epoch and augmenting on the fly gives fresh batches without ever
    holding the patch array in memory. Works under every Keras backend (no tf.data).
    """

    def __init__(self, path: str | os.PathLike, start: int, stop: int, batch_size: int, steps: int = 0,
                 shuffle: bool = True, augment: Mapping[str, Any] | None = None, seed: int = 0,
                 workers: int = 1, soft_labels: bool = False) -> None:
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
        self.path = str(path)
        self.start, self.stop = start, stop
        self.batch_size = batch_size
        self.n_batches = batches_per_pass(stop - start, batch_size)
        self.steps = steps or self.n_batches
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.soft_labels = soft_labels
        self.epoch = 0
        self._h5: h5py.File | None = None
        self._lock = threading.Lock()  # the worker threads share one handle

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Select the batch order of an epoch (so a resumed run sees the same order)."""
        self.epoch = epoch

    def _order(self, step: int) -> int:
        # Global step -> batch slot; a fresh permutation for each full pass over the batches.
        global_step = self.epoch * self.steps + step
        cycle, slot = divmod(global_step, self.n_batches)
        if not self.shuffle:
            return slot
        return int(np.random.default_rng((self.seed, cycle)).permutation(self.n_batches)[slot])

    def close(self) -> None:
        """Close the HDF5 file (reopened on the next read)."""
        with self._lock:
            if self._h5 is not None:
                self._h5.close()
                self._h5 = None

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        first = self.start + self._order(step) * self.batch_size
        last = min(first + self.batch_size, self.stop)
        # h5py reads one at a time anyway; holding the lock also keeps close() from cutting a read short.
        with self._lock:
            if self._h5 is None:
                self._h5 = h5py.File(self.path, "r")
            images = self._h5["patches/images"][first:last]
            labels = self._h5["patches/labels"][first:last]
        images, labels = images.astype(np.float32), labels.astype(np.float32)
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, step, 1))
            images, labels = augment_batch(images, labels, rng, self.augment, self.soft_labels)
        return images, labels
