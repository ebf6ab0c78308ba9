"""What a synthetic scene contains and how it is described: objects, captions with per-word
ground truth, multi-labels with a class hierarchy. Pure Python + one numpy ``Generator``; no
pixels here (see :mod:`.scene_render`), so captions and the vocabulary do not depend on the
image size and the vocabulary is built without rendering.

Coordinates are normalised: x to the right, y downwards, both in [0, 1] of the image side.
"""

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "ring", "square", "diamond", "triangle", "star")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
RADIUS = (0.075, 0.14)            # half extent of small/large objects, fraction of the side
MAX_OBJECTS = 4
CAPTIONS_PER_IMAGE = 5

# Half extents (x0, y0, x1, y1) of each shape in units of its radius (see scene_render).
SHAPE_EXTENT = {
    "circle": (-1.0, -1.0, 1.0, 1.0), "ring": (-1.0, -1.0, 1.0, 1.0),
    "square": (-0.85, -0.85, 0.85, 0.85), "diamond": (-1.0, -1.0, 1.0, 1.0),
    "triangle": (-0.95, -1.0, 0.95, 0.75), "star": (-0.951057, -1.0, 0.951057, 0.809017),
}

# Synonyms: (singular, plural). The first entry is the class name.
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disk", "disks")),
    "ring": (("ring", "rings"), ("donut", "donuts")),
    "square": (("square", "squares"), ("block", "blocks")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
}
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
OBJECT_NOUNS = (("object", "objects"), ("shape", "shapes"), ("thing", "things"))
RELATION_WORDS = {
    "left": (("left", "of"), ("to", "the", "left", "of")),
    "right": (("right", "of"), ("to", "the", "right", "of")),
    "above": (("above",), ("over",)),
    "below": (("below",), ("under",), ("beneath",)),
}
OPENERS = ((), ("there", "is"), ("a", "picture", "of"), ("an", "image", "with"), ("we", "see"),
           ("this", "scene", "shows"))

# ---- class hierarchy (Tencent ML-Images style: one parent per class, -1 = root) ----------
_PARENT_GROUPS = ("round shape", "polygon", "warm colour", "cool colour", "several objects")
_SHAPE_PARENT = {"circle": "round shape", "ring": "round shape", "square": "polygon",
                 "diamond": "polygon", "triangle": "polygon", "star": "polygon"}
_COLOUR_PARENT = {"red": "warm colour", "orange": "warm colour", "yellow": "warm colour",
                  "green": "cool colour", "blue": "cool colour", "purple": "cool colour"}


def _count_name(n):
    return f"{n} object" + ("s" if n > 1 else "")


def _build_classes():
    names = list(_PARENT_GROUPS) + list(SHAPES) + list(COLOURS)
    names += [f"{c} {s}" for c in COLOURS for s in SHAPES]
    names += [_count_name(n) for n in range(1, MAX_OBJECTS + 1)]
    parent_name = {**_SHAPE_PARENT, **_COLOUR_PARENT}
    parent_name |= {f"{c} {s}": s for c in COLOURS for s in SHAPES}   # pair → its shape
    parent_name |= {_count_name(n): "several objects" for n in range(2, MAX_OBJECTS + 1)}
    index = {n: i for i, n in enumerate(names)}
    parents = [index[parent_name[n]] if n in parent_name else -1 for n in names]
    return tuple(names), tuple(parents)


CLASSES, CLASS_PARENTS = _build_classes()
CLASS_INDEX = {n: i for i, n in enumerate(CLASSES)}


def ancestors(c: int) -> list[int]:
    out = []
    while CLASS_PARENTS[c] >= 0:
        c = CLASS_PARENTS[c]
        out.append(c)
    return out


@dataclass(frozen=True)
class Obj:
    shape: int
    colour: int
    size: int
    cx: float
    cy: float
    r: float

    @property
    def kind(self):
        return (self.shape, self.colour, self.size)

    def box(self):
        """Tight box (x0, y0, x1, y1), normalised."""
        e = SHAPE_EXTENT[SHAPES[self.shape]]
        return (self.cx + e[0] * self.r, self.cy + e[1] * self.r,
                self.cx + e[2] * self.r, self.cy + e[3] * self.r)


# ---- layout ------------------------------------------------------------------------------

def sample_objects(rng: np.random.Generator) -> list[Obj]:
    """1–4 non-overlapping objects. A third of the objects repeat an earlier object's shape,
    colour and size, so counts ("two small red circles") occur often."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    kinds = []
    for k in range(n):
        if k and rng.random() < 0.35:
            kinds.append(kinds[int(rng.integers(k))])
        else:
            kinds.append((int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))),
                          int(rng.integers(len(SIZES)))))
    for _attempt in range(50):
        placed = []
        for shape, colour, size in kinds:
            r = RADIUS[size] * (0.92 + 0.16 * rng.random())
            for _try in range(100):
                cx = r + 0.02 + (1 - 2 * r - 0.04) * rng.random()
                cy = r + 0.02 + (1 - 2 * r - 0.04) * rng.random()
                if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 >= (r + o.r + 0.03) ** 2
                       for o in placed):
                    placed.append(Obj(shape, colour, size, round(cx, 6), round(cy, 6),
                                      round(r, 6)))
                    break
            else:
                break
        if len(placed) == n:
            return placed
    return placed[:1] if placed else [Obj(*kinds[0], 0.5, 0.5, RADIUS[kinds[0][2]])]


def groups_of(objects: list[Obj]) -> list[int]:
    """Group id per object: objects of identical shape, colour and size share one (ids in
    order of first appearance). Words describe groups, so any member is a correct region."""
    first = {}
    return [first.setdefault(o.kind, len(first)) for o in objects]


def relation(a: Obj, b: Obj) -> str | None:
    """Where ``a`` is relative to ``b`` ("left", "right", "above", "below") when one axis
    clearly dominates, else None — captions only state relations a viewer cannot dispute."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= 0.15 and abs(dx) >= 1.5 * abs(dy):
        return "left" if dx > 0 else "right"
    if abs(dy) >= 0.15 and abs(dy) >= 1.5 * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def labels_of(objects: list[Obj]) -> list[int]:
    """Sorted class indices present (leaves and all their ancestors)."""
    leaves = {CLASS_INDEX[_count_name(len(objects))]}
    for o in objects:
        s, c = SHAPES[o.shape], COLOURS[o.colour]
        leaves |= {CLASS_INDEX[s], CLASS_INDEX[c], CLASS_INDEX[f"{c} {s}"]}
    full = set(leaves)
    for c in leaves:
        full.update(ancestors(c))
    return sorted(full)


# ---- captions ----------------------------------------------------------------------------

class _Sentence:
    """Tokens with the object each describes (−1: none); punctuation only shapes the text."""

    def __init__(self):
        self.tokens, self.objects, self.text = [], [], ""

    def word(self, w, obj=-1):
        self.text += (" " if self.text else "") + w
        self.tokens.append(w)
        self.objects.append(obj)

    def words(self, ws, obj=-1):
        for w in ws:
            self.word(w, obj)

    def punct(self, p):
        self.text += p


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(s, rng, members, objects, style, count=None):
    """Adds e.g. "two small red circles" for the objects ``members`` (all of one kind); every
    word of the phrase points at the group's first member."""
    o, ref = objects[members[0]], members[0]
    n = len(members) if count is None else count
    noun = _choice(rng, SHAPE_WORDS[SHAPES[o.shape]])[n > 1]
    size = _choice(rng, SIZE_WORDS[SIZES[o.size]])
    colour = _choice(rng, COLOUR_WORDS[COLOURS[o.colour]])
    first = size if style in ("size-colour", "that-size") else colour
    if n == 1:
        det = _choice(rng, ("a", "one"))
        det = "an" if det == "a" and first[0] in "aeiou" else det
    else:
        det = NUMBER_WORDS[n]
    if style == "size-colour":
        s.words((det, size, colour, noun), ref)
    elif style == "colour-size":
        s.words((det, colour, size, noun), ref)
    elif style == "that-size":            # "two small circles that are red"
        s.words((det, size, noun), ref)
        s.words(("that", "is" if n == 1 else "are"))
        s.word(colour, ref)
    else:                                 # "a circle that is small and red"
        s.words((det, noun), ref)
        s.words(("that", "is" if n == 1 else "are"))
        s.word(size, ref)
        s.word("and")
        s.word(colour, ref)


def _join(s, rng, parts, objects, style):
    """NP, NP and NP."""
    for k, members in enumerate(parts):
        if k:
            if k == len(parts) - 1:
                s.word("and")
            else:
                s.punct(",")
        _noun_phrase(s, rng, members, objects, style)


def _group_members(objects, order):
    g = groups_of(objects)
    return [[i for i in range(len(objects)) if g[i] == gid] for gid in order]


def _caption_list(rng, objects):
    gids = [int(x) for x in rng.permutation(max(groups_of(objects)) + 1)]
    parts = _group_members(objects, gids)
    s = _Sentence()
    opener = _choice(rng, OPENERS)
    if opener == ("there", "is") and len(parts[0]) > 1:
        opener = ("there", "are")
    s.words(opener)
    _join(s, rng, parts, objects, _choice(rng, ("size-colour", "size-colour", "colour-size")))
    return s


def _caption_total(rng, objects):
    gids = [int(x) for x in rng.permutation(max(groups_of(objects)) + 1)]
    parts = _group_members(objects, gids)
    n = len(objects)
    noun = _choice(rng, OBJECT_NOUNS)[n > 1]
    s = _Sentence()
    if rng.random() < 0.5:
        s.words((NUMBER_WORDS[n], noun))
        s.punct(":")
        _join(s, rng, parts, objects, "size-colour")
    else:
        _join(s, rng, parts, objects, "size-colour")
        s.punct(",")
        s.words((NUMBER_WORDS[n], noun, "in", "total"))
    return s


def _caption_relation(rng, objects):
    parts = _group_members(objects, range(max(groups_of(objects)) + 1))
    pairs = []
    for a in range(len(parts)):
        for b in range(len(parts)):
            if a != b:
                rels = {relation(objects[i], objects[j]) for i in parts[a] for j in parts[b]}
                if len(rels) == 1 and None not in rels:
                    pairs.append((a, b, rels.pop()))
    if not pairs:
        return None
    a, b, rel = _choice(rng, pairs)
    s = _Sentence()
    _noun_phrase(s, rng, parts[a], objects, "size-colour")
    if rng.random() < 0.5:
        s.word("is" if len(parts[a]) == 1 else "are")
    s.words(_choice(rng, RELATION_WORDS[rel]))
    _noun_phrase(s, rng, parts[b], objects, "size-colour")
    rest = [p for k, p in enumerate(parts) if k not in (a, b)]
    if rest:
        s.punct(",")
        s.words(_choice(rng, (("and",), ("with",), ("and", "also"))))
        _join(s, rng, [rest[int(k)] for k in rng.permutation(len(rest))], objects, "size-colour")
    return s


def _caption_order(rng, objects):
    """Every object on its own, in reading order along an axis with clear gaps."""
    if len(objects) < 2:
        return None
    axes = []
    for axis, words in (("cx", ("from", "left", "to", "right")),
                        ("cy", ("from", "top", "to", "bottom"))):
        pos = sorted(getattr(o, axis) for o in objects)
        if all(q - p >= 0.12 for p, q in zip(pos, pos[1:])):
            axes.append((axis, words))
    if not axes:
        return None
    axis, words = _choice(rng, axes)
    order = sorted(range(len(objects)), key=lambda i: getattr(objects[i], axis))
    s = _Sentence()
    s.words(words)
    s.punct(":")
    for k, i in enumerate(order):
        if k:
            if k == len(order) - 1:
                s.word("and")
            else:
                s.punct(",")
        _noun_phrase(s, rng, [i], objects, "size-colour", count=1)
    return s


def _caption_attributes(rng, objects):
    gids = [int(x) for x in rng.permutation(max(groups_of(objects)) + 1)]
    parts = _group_members(objects, gids)
    s = _Sentence()
    s.words(_choice(rng, ((), ("the", "image", "contains"), ("we", "see"))))
    _join(s, rng, parts, objects, _choice(rng, ("that-size", "that-both")))
    return s


_TEMPLATES = (_caption_list, _caption_total, _caption_relation, _caption_order,
              _caption_attributes)


def captions_of(rng: np.random.Generator, objects: list[Obj]) -> list[_Sentence]:
    """Five captions, each naming every object with its count, size, colour and shape (so the
    caption set identifies the scene's contents); one template each in random order —
    listing, total count, a relation ("left of", "above"), reading order, attributes after the
    noun — falling back to a listing where a relation or an order cannot be stated."""
    out = []
    for t in rng.permutation(len(_TEMPLATES)):
        s = _TEMPLATES[int(t)](rng, objects)
        out.append(s if s is not None else _caption_list(rng, objects))
    return out[:CAPTIONS_PER_IMAGE]


def sample_scene(rng: np.random.Generator) -> dict:
    """One scene as plain JSON-able data."""
    objects = sample_objects(rng)
    caps = captions_of(rng, objects)
    return {
        "objects": [[o.shape, o.colour, o.size, o.cx, o.cy, o.r] for o in objects],
        "texts": [c.text for c in caps],
        "tokens": [c.tokens for c in caps],
        "word_objects": [c.objects for c in caps],
    }


def objects_from(scene: dict) -> list[Obj]:
    return [Obj(int(a), int(b), int(c), float(x), float(y), float(r))
            for a, b, c, x, y, r in scene["objects"]]
