"""``fusedembed search INDEX QUERY``: the gallery items of an embedding file nearest to a
sentence or an image, embedded by the model that made the file (or ``--model``).

QUERY is a sentence, an image file, or a text file whose lines are each a sentence or an image
path (relative paths resolved from the working directory, then from the file's folder). Text
queries against an image gallery are cross-modal: the model's ``text_embedding`` is compared
with the gallery's ``image_embedding`` (a dual-path or alignment model); a single-modality
model compares its ``embedding`` of both.

``write_html`` makes a page a person can look at: each query with its top k, thumbnails of the
gallery images (read again from the folder or dataset the embedding file names), scores and ids.
"""

import base64
import html
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .embedfile import EmbeddingFile
from .index import build_index
from .inference import Embedder, decode_image, is_image_path, torchvision_io

THUMB = 128


class QueryError(ValueError):
    pass


@dataclass
class Query:
    kind: str                 # "text" | "image"
    value: str                # the sentence, or the image path


@dataclass
class Hit:
    rank: int
    id: str
    score: float


def _resolve_image(text: str, base: Optional[Path]) -> Optional[Path]:
    for root in (Path.cwd(), base):
        if root is not None and (root / text).expanduser().is_file():
            return (root / text).expanduser()
    return None


def parse_queries(query: str) -> List[Query]:
    """The queries of a QUERY argument (see the module docstring)."""
    from .data.errors import text_lines

    path = Path(query).expanduser()
    if path.is_file() and is_image_path(query):
        return [Query("image", str(path))]
    if path.is_file():
        queries = []
        for n, line in text_lines(path):
            line = line.strip()
            if not line:
                continue
            image = _resolve_image(line, path.parent) if is_image_path(line) else None
            if is_image_path(line) and image is None:
                raise QueryError(f"{path}:line {n}: {line!r} looks like an image path, but there is no such file")
            queries.append(Query("image", str(image)) if image else Query("text", line))
        if not queries:
            raise QueryError(f"QUERY file {str(path)!r} has no query (one sentence or image path per line)")
        return queries
    if is_image_path(query) and " " not in query.strip():
        raise QueryError(f"QUERY {query!r} looks like an image path, but there is no such file")
    if not query.strip():
        raise QueryError("QUERY is empty")
    return [Query("text", query.strip())]


def embed_queries(embedder: Embedder, queries: Sequence[Query]) -> torch.Tensor:
    """(Q, D) embeddings of the queries, in their order."""
    rows: List[Optional[torch.Tensor]] = [None] * len(queries)
    for kind in ("text", "image"):
        which = [i for i, q in enumerate(queries) if q.kind == kind]
        if not which:
            continue
        if kind == "text":
            _, emb = embedder.embed_texts([queries[i].value for i in which])
        else:
            try:
                images = [decode_image(queries[i].value) for i in which]
            except ValueError as err:
                raise QueryError(str(err)) from None
            _, emb = embedder.embed_images(images)
        for i, row in zip(which, emb):
            rows[i] = row
    return torch.stack(rows)


def search(gallery: EmbeddingFile, embedder: Embedder, queries: Sequence[Query], k: int = 10,
           index=None) -> List[List[Hit]]:
    """The top ``k`` of the gallery for each query; ``index``: one built over ``gallery``
    (default: exact search, streaming the file)."""
    q = embed_queries(embedder, queries)
    if q.shape[1] != gallery.dim:
        raise QueryError(f"the model embeds queries in {q.shape[1]} dimensions, the gallery {gallery.path} "
                         f"holds {gallery.dim}: it was made by another model")
    index = index if index is not None else build_index(gallery, "exact", device=embedder.device, resident=False)
    scores, found = index.search(q, k)
    return [[Hit(r + 1, gallery.ids[i], float(s)) for r, (s, i) in enumerate(zip(srow.tolist(), irow.tolist()))
             if i >= 0] for srow, irow in zip(scores, found)]


def check_model(gallery: EmbeddingFile, model_path: str) -> None:
    """Warns when the model at ``model_path`` is not the one that made the gallery."""
    from .embed import model_stamp

    made_by = gallery.meta.get("model")
    if not Path(model_path).exists():      # loading it reports that
        return
    if Path(model_path).resolve() != Path(made_by or "").resolve():
        warnings.warn(f"{gallery.path} was made by {made_by}; queries are embedded by {model_path}: the "
                      f"scores are meaningful only if both embed into one space", RuntimeWarning, stacklevel=2)
    elif gallery.meta.get("model_stamp") != model_stamp(model_path):
        warnings.warn(f"{model_path} changed since {gallery.path} was made (retrained?): re-embed the gallery "
                      f"for meaningful scores", RuntimeWarning, stacklevel=2)


def format_hits(queries: Sequence[Query], hits: Sequence[Sequence[Hit]]) -> str:
    lines = []
    for n, (q, row) in enumerate(zip(queries, hits), 1):
        lines.append(f"query {n} ({q.kind}): {q.value}")
        lines += [f"  {h.rank:>3}  {h.score:+.4f}  {h.id}" for h in row]
    return "\n".join(lines) + "\n"


# -- the HTML page ------------------------------------------------------------------------
class Thumbnails:
    """PNG data URIs of gallery items by id, read again from the source the file names."""

    def __init__(self, gallery: EmbeddingFile):
        self.source = gallery.meta.get("source") or {}
        self._dataset = None

    def _image(self, id_: str) -> Optional[torch.Tensor]:
        kind = self.source.get("kind")
        if kind == "folder":
            return decode_image(Path(self.source["root"]) / id_)
        if kind == "dataset":
            if self._dataset is None:
                from .embed import build_dataset

                self._dataset = build_dataset(self.source)
            image = self._dataset[int(id_.rpartition(":")[2])].get("image")
            if image is None:
                return None
            lo, hi = float(image.min()), float(image.max())
            # Normalised pixels (mean/std) are shown rescaled to [0, 1].
            return image if lo >= 0 and hi <= 1 else (image - lo) / max(hi - lo, 1e-12)
        return None

    def uri(self, id_: str) -> Optional[str]:
        try:
            image = self._image(id_)
        except (ValueError, OSError, IndexError, KeyError):
            return None
        return None if image is None else image_uri(image)


def image_uri(image: torch.Tensor) -> str:
    """A float CHW image in [0, 1] as a PNG data URI, at most THUMB pixels a side."""
    from torchvision.io import encode_png
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    scale = THUMB / max(h, w)
    if scale < 1:
        image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    with torchvision_io():
        png = encode_png(image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
    return "data:image/png;base64," + base64.b64encode(png.numpy().tobytes()).decode("ascii")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.2em; }} .meta {{ color: #666; font-size: .9em; }}
section {{ margin: 1.5em 0; border-top: 1px solid #ddd; padding-top: .8em; }}
.query {{ font-weight: 600; margin-bottom: .5em; }} .query img {{ vertical-align: middle; margin-right: .5em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: .8em; }}
figure {{ margin: 0; width: {thumb}px; font-size: .8em; }} figure img {{ width: {thumb}px; image-rendering: pixelated;
  border: 1px solid #ccc; }}
figcaption {{ word-break: break-all; }} .score {{ color: #666; }} .text {{ width: auto; max-width: 40em; }}
</style></head><body>
<h1>{title}</h1><p class="meta">{meta}</p>
{sections}
</body></html>
"""


def write_html(path, gallery: EmbeddingFile, queries: Sequence[Query], hits: Sequence[Sequence[Hit]]) -> Path:
    """A self-contained page (thumbnails inline as data URIs) of each query and its hits."""
    thumbs = Thumbnails(gallery)
    image_gallery = gallery.meta.get("modality") == "image"
    sections = []
    for n, (q, row) in enumerate(zip(queries, hits), 1):
        if q.kind == "image":
            try:
                head = f'<img src="{image_uri(decode_image(q.value))}" alt="">{html.escape(q.value)}'
            except ValueError:
                head = html.escape(q.value)
        else:
            head = f"&ldquo;{html.escape(q.value)}&rdquo;"
        figures = []
        for h in row:
            caption = (f'<figcaption><span class="score">#{h.rank} &middot; {h.score:.4f}</span><br>'
                       f"{html.escape(h.id)}</figcaption>")
            uri = thumbs.uri(h.id) if image_gallery else None
            if uri:
                figures.append(f'<figure><img src="{uri}" alt="{html.escape(h.id)}">{caption}</figure>')
            else:
                figures.append(f'<figure class="text">{caption}</figure>')
        sections.append(f'<section><div class="query">{n}. {head}</div><div class="hits">{"".join(figures)}'
                        f"</div></section>")
    meta = (f"gallery {html.escape(str(gallery.path))}: {len(gallery)} {html.escape(str(gallery.meta.get('output')))} "
            f"rows; model {html.escape(str(gallery.meta.get('model')))}")
    path = Path(path)
    path.write_text(PAGE.format(title="fusedembed search", meta=meta, sections="\n".join(sections), thumb=THUMB),
                    encoding="utf-8")
    return path
