"""Reading image files, with errors that name the image and where it was listed."""

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError, SkipLog

_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def load_image(path, listed_in=None, where=None) -> torch.Tensor:
    """RGB image as float CHW in [0, 1]; a :class:`DataError` naming the image file and the
    list file + location that referenced it when it cannot be read."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except _READ_ERRORS as err:
        raise DataError(listed_in or path, where, f"cannot read image {path}: {err}") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def check_image(path, log: SkipLog, listed_in, where, verify: bool) -> bool:
    """True when the file exists (and, with ``verify``, its header decodes); otherwise raises,
    or records the problem in ``log`` when skipping and returns False."""
    if not os.path.isfile(path):
        log.bad("missing_image", listed_in, where, f"image file not found: {path}")
        return False
    if verify:
        try:
            with Image.open(path) as im:
                im.verify()
        except _READ_ERRORS as err:
            log.bad("unreadable_image", listed_in, where, f"cannot read image {path}: {err}")
            return False
    return True
