"""Datasets: the embedded demo data "scenes" and readers of real formats.

Factories (the built-in plugin registers them as datasets):

* ``scenes(split="train", root=None, num_images=None, image_size=64, seed=0, view="pair",
  vocab=None, train_images=None, transform=None, progress=True)`` — synthetic captioned
  scenes, generated once and cached (:mod:`.scene_dataset`).
* ``karpathy(json_path, image_root, split="train", view="pair", vocab=None, min_count=1,
  captions_per_image=None, transform=None, skip_bad=False, verify_images=False, seed=0)`` —
  Flickr30k / MSCOCO Karpathy split JSON.
* ``caption_folder(root, captions_file="captions.jsonl", split=None, view="pair", ...)`` —
  a folder of images + ``captions.jsonl``.
* ``collate(batch, pad_to=None)`` — batches items (pads tokens, returns lengths);
  ``by_image_size(items)`` groups them by image shape.
* ``tokenize(text)`` — the one word rule of every reader (and of new sentences at embedding
  time); ``normalize_token(token)`` spells a dataset's pre-tokenised tokens the same way.
* ``read_text(path)`` / ``text_lines(path)`` — a UTF-8 text file (or its numbered lines), or a
  ``DataError`` naming it (missing, or not UTF-8: the line and byte offset), for plugin
  readers; every reader here reads text that way.
* For plugin readers of image lists, the pieces the readers here are built from:
  ``load_image(path, listed_in, where)`` (RGB float CHW; ``ImageReadError`` naming the image
  and the list entry), ``check_image(path, log, listed_in, where, verify)``, ``SkipLog`` (counts
  and messages of skipped entries) and the ``SkipsUnreadable`` mixin (``skip_bad`` at access).

Item contract (dicts). Caption datasets (scenes, karpathy, caption_folder) have three views
— ``"image"``: one item per image with one caption drawn per epoch (``set_epoch``);
``"pair"``: every (image, caption) pair; ``"text"``: captions only, no image — and
``dataset.caption_to_image`` (M,) for the retrieval metrics. Keys:

=================  ====================================================================
``image``          float32 (3, H, W) in [0, 1] (then ``transform``); not in "text" view
``instance``       int, the image index in the split = its class for the instance loss
``caption_id``     int, global caption index j (``caption_to_image[j] == instance``)
``caption_index``  int, which of the image's captions (0..4 for scenes)
``caption``        str, the caption text
``tokens``         int64 (T,) token ids (``<pad>``=0, ``<unk>``=1), unpadded
``labels``         float32 (C,) multi-hot incl. ancestors (scenes)
``boxes``          float32 (K, 4) object boxes x0, y0, x1, y1 in pixels (scenes)
``objects``        int64 (K, 3) shape, colour, size index of each object (scenes)
``object_groups``  int64 (K,) objects with equal group are identical (scenes)
``word_objects``   int64 (T,) per token the object it describes, −1 if none (scenes)
``path``           str, image file (file readers)
=================  ====================================================================

A word that describes several identical objects ("two red circles") points at the first
of them; any object of the same ``object_groups`` id is an equally right region (the
alignment metrics take ``groups``).
"""

from .collate import by_image_size, collate
from .errors import DataError, SkipLog, read_json, read_text, text_lines
from .image_captions import ImageCaptionDataset, caption_folder, karpathy
from .image_io import ImageReadError, SkipsUnreadable, check_image, load_image
from .scene_dataset import ScenesDataset, ensure_split, scene_vocab, scenes
from .vocab import PAD_ID, UNK_ID, Vocab, normalize_token, tokenize
from .word_vectors import embedding_matrix, read_word_vectors

__all__ = [
    "collate", "by_image_size", "DataError", "SkipLog", "read_json", "read_text", "text_lines", "ImageCaptionDataset", "caption_folder",
    "karpathy", "ImageReadError", "SkipsUnreadable", "check_image", "load_image",
    "ScenesDataset", "ensure_split", "scene_vocab", "scenes", "PAD_ID", "UNK_ID", "Vocab",
    "tokenize", "normalize_token", "read_word_vectors", "embedding_matrix",
]
