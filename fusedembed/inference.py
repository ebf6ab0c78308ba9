"""A trained model ready to embed new images and sentences (``fusedembed embed``, ``search``,
``serve``).

MODEL is a training checkpoint (``last.pt`` / ``best.pt``: the resolved recipe is under
``"config"``, the stage it was saved in under ``"stage_name"``) or an exported folder
(``model.safetensors`` + ``config.yaml``, from ``fusedembed export``). The model is the recipe's
model of that stage, in eval mode, on the GPU when there is one, under bf16 autocast there.

What a new input goes through comes from the recipe, never from a paper's rule:

* images: decoded from the file with torchvision.io (RGB, float in [0, 1]), then the
  reference dataset's ``file_transform`` (resize, normalisation: what its own images went
  through), else its ``transform`` (what a dataset reading image files applies to them), else
  a resize to the size of its first image;
* sentences: the model's ``tokenize(texts) -> batch`` when it has one; else the reference
  dataset's ``tokenize(text) -> ids`` and its collate.

The reference dataset is the recipe's ``data.test``, else ``data.val``, else ``data.train``
(all splits of a recipe share their vocabulary and image size), built only when an input
needs it. The embedding read is ``image_embedding`` / ``text_embedding`` for a cross-modal
model, ``embedding`` for a single-modality one (see :mod:`fusedembed.hookspecs`).
"""

import contextlib
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from .devices import resolve_device
from .errors import UserError

OUTPUTS = {"image": ("image_embedding", "embedding"), "text": ("text_embedding", "embedding")}
SPLITS = ("test", "val", "train")


class ModelError(UserError, ValueError):
    """MODEL cannot be loaded or cannot embed the input given."""


def _stage_recipe(config: dict, stage: Optional[str], where: str):
    """The recipe of ``config`` as it stood in ``stage`` (stages may change the model)."""
    from .config import RecipeError, stage_recipes, validate

    try:
        recipe = validate(config, check=True, source=where)
        stages = dict(stage_recipes(recipe))
    except RecipeError as err:
        raise ModelError(f"{where}: its recipe does not load here: {err}") from None
    if stage in stages:
        return recipe, stages[stage]
    return recipe, list(stages.values())[-1]


def _checkpoint(path: Path, device):
    from .trainer import CheckpointError, load_model

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"model {str(path)!r} cannot be read as a checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ModelError(f"model {str(path)!r} is not a fusedembed training checkpoint (no 'config' "
                         f"recipe in it); give last.pt/best.pt of a run or an exported folder")
    config, stage = state["config"], state.get("stage_name")
    del state                                   # load_model reads the file itself
    recipe, staged = _stage_recipe(config, stage, str(path))
    try:
        return recipe, staged, load_model(staged, path, device=device)
    except CheckpointError as err:
        raise ModelError(str(err)) from None


def _exported(path: Path, device):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .config import read_yaml
    from .plugins import build

    weights, config = path / "model.safetensors", path / "config.yaml"
    missing = [p.name for p in (weights, config) if not p.is_file()]
    if missing:
        raise ModelError(f"model folder {str(path)!r} lacks {', '.join(missing)}; an exported model has "
                         f"model.safetensors and config.yaml (fusedembed export)")
    with safe_open(str(weights), framework="pt") as f:
        stage = (f.metadata() or {}).get("stage")
    recipe, staged = _stage_recipe(read_yaml(config), stage, str(config))
    model = build("model", staged.model)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        raise ModelError(f"{weights}: the weights do not fit the recipe's model: "
                         f"{str(err).splitlines()[0]}") from None
    return recipe, staged, model.to(device).eval()


class Embedder:
    """A loaded model and the preprocessing of its recipe: ``embed_images``,
    ``embed_texts``, ``embed_batch``. Use :func:`load_embedder`."""

    def __init__(self, model: torch.nn.Module, recipe, stage_recipe, device: torch.device, source: str,
                 amp: bool = True):
        self.model, self.recipe, self.stage_recipe = model, recipe, stage_recipe
        self.device, self.source = device, source
        self.amp = amp and device.type == "cuda"
        self._reference = None
        self._image_transform = None

    # -- the reference dataset ---------------------------------------------------------
    def reference(self):
        """The recipe's test (else val, else train) dataset: its preprocessing and vocabulary."""
        if self._reference is None:
            from .plugins import build

            data = self.stage_recipe.data
            split = next((s for s in SPLITS if getattr(data, s) is not None), None)
            if split is None:
                raise ModelError(f"{self.source}: the recipe names no dataset, so there is no image "
                                 f"preprocessing or vocabulary to embed new input with")
            try:
                self._reference = build("dataset", getattr(data, split), split=split)
            except Exception as err:
                raise ModelError(f"{self.source}: the recipe's data.{split} dataset gives the preprocessing "
                                 f"and vocabulary of new input, and it does not build here: "
                                 f"{type(err).__name__}: {err}") from None
        return self._reference

    @property
    def image_transform(self):
        """The callable a decoded image file (float CHW in [0, 1]) goes through."""
        if self._image_transform is None:
            ref = self.reference()
            transform = getattr(ref, "file_transform", _MISSING)
            if transform is _MISSING:       # a dataset reading image files applies `transform` to them
                transform = getattr(ref, "transform", None) or self._resize_like(ref)
            self._image_transform = transform if transform is not None else _identity
        return self._image_transform

    def _resize_like(self, ref):
        from .data.image_io import ResizeThen

        item = ref.with_view("image")[0] if hasattr(ref, "with_view") else ref[0]
        if "image" not in item:
            raise ModelError(f"{self.source}: the recipe's dataset {type(ref).__name__} has no images")
        h, w = item["image"].shape[-2:]
        if h != w:
            raise ModelError(f"{type(ref).__name__} has neither file_transform nor transform, and {h}x{w} images: "
                             f"it must define file_transform for images to be embedded from files")
        warnings.warn(f"{type(ref).__name__} has neither file_transform nor transform: image files are resized "
                      f"to {h}x{w} (the size of its first image) with no other preprocessing",
                      RuntimeWarning, stacklevel=3)
        return ResizeThen(h)

    # -- batches -----------------------------------------------------------------------
    def text_batch(self, texts: Sequence[str]) -> dict:
        """The batch fields the model reads for ``texts`` (tokens, lengths, ...)."""
        texts = [str(t) for t in texts]
        if hasattr(self.model, "tokenize"):
            return self.model.tokenize(texts)
        ref = self.reference()
        if hasattr(ref, "tokenize"):
            ids = [ref.tokenize(t) for t in texts]
        elif hasattr(getattr(ref, "vocab", None), "encode"):
            from .data import tokenize

            ids = [torch.tensor(ref.vocab.encode(tokenize(t)), dtype=torch.long) for t in texts]
        else:
            raise ModelError(f"{self.source}: cannot turn sentences into model input: the model has no "
                             f"tokenize(texts) and its recipe's dataset {type(ref).__name__} has neither "
                             f"tokenize(text) nor a vocab")
        empty = [t for t, i in zip(texts, ids) if len(i) == 0]
        if empty:
            raise ModelError(f"sentence {empty[0]!r} has no word to embed")
        return collate_of(ref)([{"tokens": i} for i in ids])

    def has_words(self, text: str) -> bool:
        """False for a sentence the recipe's tokenizer finds no word in ("!!!")."""
        if hasattr(self.model, "tokenize"):
            return True
        ref = self.reference()
        if hasattr(ref, "tokenize"):
            return len(ref.tokenize(text)) > 0
        from .data import tokenize

        return bool(tokenize(text))


    @torch.no_grad()
    def embed_batch(self, batch: dict, modality: str):
        """``(output key, embeddings (B, D) float32 on the CPU)`` of a prepared batch."""
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        try:
            with amp:
                out = self.model(batch)
        except KeyError as err:     # forward looked for a field this modality does not give
            raise ModelError(f"{self.source}: the model does not take {modality} input (its forward looks for "
                             f"{err} in the batch, which holds {', '.join(sorted(batch))})") from None
        key = next((k for k in OUTPUTS[modality] if k in out), None)
        if key is None:
            raise ModelError(f"{self.source}: given {modality} input, the model returned "
                             f"{', '.join(sorted(out)) or 'nothing'}, none of {', '.join(OUTPUTS[modality])}")
        return key, out[key].float().cpu()

    def embed_texts(self, texts: Sequence[str]):
        return self.embed_batch(self.text_batch(texts), "text")

    def embed_images(self, images: Sequence[torch.Tensor]):
        """``(output key, embeddings (B, D))`` of decoded images (float CHW in [0, 1]),
        preprocessed; one forward per size the preprocessing leaves them at."""
        from .data.collate import by_image_size

        if not images:
            raise ValueError("embed_images: no image given")
        items = [{"image": self.image_transform(im)} for im in images]
        out = None
        for ks in by_image_size(items):
            key, emb = self.embed_batch({"image": torch.stack([items[k]["image"] for k in ks])}, "image")
            out = emb.new_empty(len(items), emb.shape[1]) if out is None else out
            out[ks] = emb
        return key, out


_MISSING = object()


def _identity(x):
    return x


def collate_of(dataset):
    """The dataset's own ``collate`` when it has one, else fusedembed's."""
    from .data import collate

    return getattr(dataset, "collate", None) or collate


def load_embedder(model_path, *, device=None, amp: bool = True) -> Embedder:
    """The model of a checkpoint file or an exported folder (see the module docstring), on
    ``device`` (default: the GPU when there is one)."""
    path = Path(model_path).expanduser()
    dev = resolve_device(device, what="--device")
    if path.is_dir():
        recipe, staged, model = _exported(path, dev)
    elif path.is_file():
        recipe, staged, model = _checkpoint(path, dev)
    else:
        raise ModelError(f"model {str(path)!r} does not exist (give a checkpoint such as runs/x/best.pt, "
                         f"or a folder written by fusedembed export)")
    return Embedder(model.eval(), recipe, staged, dev, str(path.resolve()), amp)


@contextlib.contextmanager
def torchvision_io():
    """torchvision 0.29 deprecates its image codecs (for TorchCodec's) with a warning at every
    call, which would repeat once per image; it is silenced around fusedembed's few calls
    (decode_image, image_tensor_from_bytes, the search page's encode_png), the places to
    change when moving to TorchCodec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def decode_image(path) -> torch.Tensor:
    """An image file as float RGB (3, H, W) in [0, 1], decoded by torchvision.io; raises
    ValueError naming the file when it cannot be decoded."""
    from torchvision.io import ImageReadMode, read_file
    from torchvision.io import decode_image as tv_decode

    try:
        with torchvision_io():
            data = read_file(str(path))
            if data.numel() == 0:
                raise ValueError("empty file")
            image = tv_decode(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as err:
        raise ValueError(f"cannot decode image {path}: {_first_line(err)}") from None
    return _first_frame(image).float().div_(255)


def image_tensor_from_bytes(data: bytes, what: str) -> torch.Tensor:
    """Encoded image bytes (JPEG, PNG, GIF, WebP) as float RGB (3, H, W) in [0, 1]."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    if not data:
        raise ValueError(f"{what}: empty image data")
    try:
        with torchvision_io():
            image = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{what}: cannot decode the image ({_first_line(err)})") from None
    return _first_frame(image).float().div_(255)


def _first_line(err: Exception) -> str:
    """The reason alone: torchvision prefixes "<function>, <source file>:<line>, "."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\w+(?:\(\))?, \S+:\d+, ", "", line)


def _first_frame(image: torch.Tensor) -> torch.Tensor:
    return image[0] if image.ndim == 4 else image           # an animated GIF: (frames, 3, H, W)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")   # what torchvision.io decodes


def is_image_path(text: str) -> bool:
    return Path(text).suffix.lower() in IMAGE_EXTENSIONS
