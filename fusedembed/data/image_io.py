"""Reading image files, with errors that name the image and where it was listed.

Verification (``verify_images=True`` of the readers) decodes each image with the same decoder
and steps as loading it (JPEG at 1/8 scale: the whole compressed stream is still read, so a
truncated file fails), so an image that passes verification loads at access; a file that
changes afterwards fails at access, naming it — or, with ``skip_bad=True``, is skipped there
(see :class:`SkipsUnreadable`).
"""

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError, SkipLog

_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


class ImageReadError(DataError):
    """An image file that cannot be read (its path is ``image_path``)."""

    def __init__(self, path, where, reason, image_path):
        super().__init__(path, where, reason)
        self.image_path = str(image_path)


def _decode(path, small: bool) -> Image.Image:
    """The image as RGB; ``small``: JPEG decoded at 1/8 scale (for checking only)."""
    with Image.open(path) as im:
        if small:
            im.draft(im.mode, (1, 1))
        return im.convert("RGB")


def load_image(path, listed_in=None, where=None) -> torch.Tensor:
    """RGB image as float CHW in [0, 1]; an :class:`ImageReadError` naming the image file and
    the list file + location that referenced it when it cannot be read."""
    try:
        arr = np.asarray(_decode(path, small=False))
    except _READ_ERRORS as err:
        raise ImageReadError(listed_in or path, where, f"cannot read image {path}: {err}",
                             path) from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


class ResizeThen:
    """Resizes a float CHW image to ``size`` × ``size`` (antialiased), then applies ``then``
    (when given): a picklable transform for DataLoader workers."""

    def __init__(self, size: int, then=None):
        self.size, self.then = int(size), then

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = TF.resize(image, [self.size, self.size], antialias=True)
        return self.then(image) if self.then is not None else image


def check_image(path, log: SkipLog, listed_in, where, verify: bool) -> bool:
    """True when the file exists (and, with ``verify``, decodes); otherwise raises, or records
    the problem in ``log`` when skipping and returns False."""
    if not os.path.isfile(path):
        log.bad("missing_image", listed_in, where, f"image file not found: {path}")
        return False
    if verify:
        try:
            _decode(path, small=True)
        except _READ_ERRORS as err:
            log.bad("unreadable_image", listed_in, where, f"cannot read image {path}: {err}")
            return False
    return True


class SkipsUnreadable:
    """Mixin of datasets whose items read image files (``self.skip_bad``, ``self.skipped``,
    ``self.skip_messages``): with ``skip_bad``, an item whose image cannot be read at access
    is replaced by the next item (in index order, wrapping) whose image can; each unreadable
    image is counted once in ``skipped["unreadable_image"]`` and reported by a warning naming
    it. Counts are per process (each DataLoader worker counts its own; the warnings show them
    all). A replaced item changes what an evaluation sees: verify images up front for that."""

    def _init_skips(self, log: SkipLog | None) -> None:
        self.skip_bad = bool(log and log.skip_bad)
        self.skipped = dict(log.counts) if log else {}
        self.skip_messages = list(log.messages) if log else []
        self._unreadable_paths: set[str] = set()     # shared by views, like the counts

    def _read_item(self, idx: int, get) -> dict:
        try:
            return get(idx)
        except ImageReadError as err:
            if not self.skip_bad:
                raise
            self._unreadable(err)
            last = err
        n = len(self)
        for step in range(1, n):
            try:
                return get((idx + step) % n)
            except ImageReadError as err:
                self._unreadable(err)
                last = err
        raise DataError(last.path, None, f"none of the {n} items has a readable image "
                        "(skip_bad=True)")

    def _unreadable(self, err: ImageReadError) -> None:
        if err.image_path in self._unreadable_paths:
            return
        self._unreadable_paths.add(err.image_path)
        self.skipped["unreadable_image"] = self.skipped.get("unreadable_image", 0) + 1
        if len(self.skip_messages) < 100:
            self.skip_messages.append(str(err))
        warnings.warn(f"{err}; skipped (skip_bad=True): the next readable item is served instead",
                      RuntimeWarning, stacklevel=4)
