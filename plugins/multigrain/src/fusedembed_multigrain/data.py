"""Training datasets: an ImageFolder root (ImageNet) and the embedded scenes as a single-label
task (the demo). Every item carries ``instance`` = its dataset index (the release's
IdDataset): the repeated-augmentation copies of one image share it."""

from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from torch.utils.data import Dataset

from fusedembed.data import scenes
from fusedembed.data.vocab import Vocab

from .transforms import eval_transform, train_transform

TrainKind = Literal["full", "autoaugment", "flip"]
TestKind = Literal["rect", "center", "resize"]


class Indexed(Dataset):
    """Items {"image", "label", "instance", "index"} of (image, label) pairs."""

    def __init__(self, base, transform, labels: Sequence[int], num_classes: int, classes=None):
        self.base, self.transform = base, transform
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_classes, self.classes = num_classes, classes

    def __len__(self):
        return len(self.labels)

    def raw_image(self, i: int):
        return self.base(i)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(self.base(i)), "label": int(self.labels[i]), "instance": i, "index": i}


def imagefolder(split: str, root: str, train_kind: TrainKind = "full", test_kind: TestKind = "center",
                size: int = 224, scale: Sequence[float] = (0.08, 1.0)) -> Indexed:
    """``root/train`` and ``root/val`` in ImageFolder layout (the "test" split reads val)."""
    from torchvision.datasets import ImageFolder

    folder = Path(root).expanduser() / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise FileNotFoundError(f"imagefolder: root {str(root)!r} has no {folder.name}/ folder")
    base = ImageFolder(str(folder))
    tf = train_transform(train_kind, size, scale) if split == "train" else eval_transform(test_kind, size)
    return Indexed(lambda i: base.loader(base.samples[i][0]), tf, [t for _, t in base.samples],
                   len(base.classes), base.classes)


def scenes_objects(split: str, num_images: Optional[int] = None, image_size: int = 64, seed: int = 0,
                   root: Optional[str] = None, train_kind: TrainKind = "full",
                   scale: Sequence[float] = (0.6, 1.0), train_size: Optional[int] = None,
                   test_size: Optional[int] = None,
                   test_kind: TestKind = "resize", progress: bool = False,
                   scenes_split: Optional[Literal["train", "val", "test"]] = None) -> Indexed:
    """The embedded scenes as a single-label task: the number of objects in the scene (1 to 4,
    label 0 to 3). Object counts survive flips, colour jitter and crops that keep most of the
    image (``scale`` (0.6, 1) by default), unlike the colour and shape labels. Images are
    generated at ``image_size``; training crops are resized to ``train_size``, test images
    to ``test_size`` (both default ``image_size``)."""
    base = scenes(scenes_split or split, root=root, num_images=num_images, image_size=image_size, seed=seed,
                  view="image", vocab=Vocab([]), progress=progress)
    labels = [len(base.boxes(i)) - 1 for i in range(len(base))]
    tf = (train_transform(train_kind, train_size or image_size, scale) if split == "train"
          else eval_transform(test_kind, test_size or image_size))
    return Indexed(base.load_image, tf, labels, 4, ["1 object", "2 objects", "3 objects", "4 objects"])
