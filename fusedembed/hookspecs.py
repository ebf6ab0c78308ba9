"""The hooks a fusedembed plugin implements.

A plugin is a module (or object) whose functions carry ``@fusedembed.hookimpl`` and are named
after the hooks below. It is found through the entry-point group ``fusedembed``::

    [project.entry-points.fusedembed]
    myplugin = "my_package.plugin"

Every hook receives one argument, ``register``, and calls it once per thing it provides.
Registering only records a factory: nothing is built (and no weights are read) until a recipe
asks for the name, so listing plugins stays cheap. Hooks return nothing.

Components are registered as ``register(name, factory, *, description="")``. ``name`` is
letters, digits, ``_``, ``-`` and ``.``, and the registry files it as ``<plugin>/<name>`` (the
plugin is the entry point's name): ``register("margin", ...)`` in plugin ``multigrain`` is
``multigrain/margin``. Recipes may write the bare name while only one loaded plugin has it; the
recipes a plugin ships name their own components in full. ``factory`` is any callable (a
function or a class); the keyword arguments it accepts are exactly the keys a config may set
next to ``name``, so give them defaults and annotations where you can (the recipe loader checks
values against the annotations). ``description`` defaults to the first line of the factory's
docstring.

Recipes are registered as ``register(name, path, *, description="")`` with the absolute path of
a YAML file shipped inside the package; users address it as ``<plugin>/<name>``.

Model outputs follow one vocabulary, so losses and evaluators of different plugins fit together:
``embedding`` (the retrieval vector of a single-modality model), ``image_embedding`` and
``text_embedding`` (a cross-modal model's two, in one space), ``features`` (the backbone's
output before any head; ``image_features`` / ``text_features`` in a cross-modal model),
``logits`` (classifier scores). Embeddings that are compared by dot
product are L2-normalised by the model.
"""

import pluggy

hookspec = pluggy.HookspecMarker("fusedembed")
hookimpl = pluggy.HookimplMarker("fusedembed")


@hookspec
def fusedembed_register_backbones(register):
    """Register feature extractors: ``register(name, factory, *, description="")``.

    ``factory(**kwargs)`` returns an ``nn.Module`` with an int attribute ``out_dim``. Its
    ``forward`` takes one tensor of its modality, images ``(B, 3, H, W)`` float or token ids
    ``(B, L)`` long, and returns features ``(B, out_dim)``. Pretrained weights come only from a
    local file named in the config (conventionally ``pretrained_path``); factories never download.

    A library of models too large to list registers a family: a name with ``*`` and a resolver,
    ``register("*", resolve)``; ``resolve(bare_name)`` returns the factory of that name, or
    None, or raises ``LookupError(why)`` (see :mod:`fusedembed.registry`). The core's plugin
    ``timm`` makes every timm model a backbone this way (``timm/convnext_tiny``).
    """


@hookspec
def fusedembed_register_losses(register):
    """Register losses: ``register(name, factory, *, description="")``.

    ``factory(**kwargs)`` returns an ``nn.Module``, so parameters it learns (a margin) and state
    buffers it keeps (per-class counters) are saved and restored with the checkpoint.
    ``forward`` takes tensors by keyword and returns a scalar tensor. The recipe lists losses as
    ``{name, weight, inputs, **kwargs}``: ``inputs`` maps a ``forward`` argument to a model output
    or batch field (an argument not mapped is looked up under its own name), ``weight`` scales
    it in the summed objective; both are the trainer's, never passed to the factory.
    """


@hookspec
def fusedembed_register_datasets(register):
    """Register datasets: ``register(name, factory, *, description="")``.

    ``factory(split, **kwargs)`` takes the split (``"train"``, ``"val"`` or ``"test"``; the
    trainer passes it, the config never sets it) and returns a ``torch.utils.data.Dataset``.
    Each item is a dict holding the keys the dataset provides, from this vocabulary:

    - ``image``: float tensor ``(3, H, W)``
    - ``tokens``: long tensor ``(L,)`` of token ids, 0 is padding; ``caption``: the caption string
    - ``label``: int class id; ``labels``: float tensor ``(C,)``, multi-hot or confidences
    - ``boxes``: float tensor ``(N, 4)``, ``x0, y0, x1, y1`` in pixels
    - ``instance``: int id of the image the item belongs to (its captions share it)
    - ``caption_id``: int global index of the caption; a caption dataset also exposes
      ``caption_to_image`` (long tensor, caption id -> instance) for the retrieval metrics
    - ``index``: int position of the item in the dataset

    A dataset whose items need more than ``default_collate`` (text of varying length) exposes
    ``collate(items) -> batch``; it pads ``tokens`` and adds ``lengths``.

    So that a model trained on it can embed new input (``fusedembed embed`` / ``search`` /
    ``serve``), a dataset may expose ``tokenize(text) -> LongTensor (T,)``: the ids its items'
    ``tokens`` would hold for a new sentence (caption datasets have it, from their vocabulary),
    and ``file_transform``: the callable an image decoded from a file (float ``(3, H, W)`` in
    [0, 1]) goes through to look like its items' images (resize, normalisation; None: as it
    is). Without it, its ``transform`` is used (the convention of datasets that read image
    files), else image files are resized to the size of its first image.
    """


@hookspec
def fusedembed_register_samplers(register):
    """Register batch samplers: ``register(name, factory, *, description="")``.

    ``factory(dataset, **kwargs)`` receives the built dataset (the trainer passes it) and returns
    a ``torch.utils.data.Sampler``. One that yields whole batches (lists of indices, e.g. P
    classes x K instances) sets ``yields_batches = True`` so the trainer uses it as the
    ``batch_sampler``. ``set_epoch(epoch)``, when present, is called before every epoch. A
    factory that accepts ``num_replicas`` and ``rank`` is given them under distributed training.
    """


@hookspec
def fusedembed_register_evaluators(register):
    """Register evaluators: ``register(name, factory, *, description="")``.

    ``factory(**kwargs)`` returns a callable ``evaluator(model, loader, *, device)`` that runs
    the model over a split and returns a flat ``dict[str, float]`` of metrics (``"i2t_R@1"``),
    which the trainer logs and may pick its best checkpoint by.
    """


@hookspec
def fusedembed_register_models(register):
    """Register models: ``register(name, factory, *, description="")``.

    ``factory(**kwargs)`` returns an ``nn.Module`` whose ``forward(batch)`` takes the collated
    batch dict and returns a dict of named output tensors (``"image_embedding"``, ``"logits"``)
    that losses and evaluators consume. Sub-components arrive as config dicts
    (``{"name": "resnet50", ...}``); build them with ``fusedembed.build("backbone", cfg)`` and
    annotate the argument ``fusedembed.spec("backbone")`` so recipes are checked down into it.

    A model whose text input needs its own tokenizer (not its recipe's dataset's
    ``tokenize``) defines ``tokenize(texts: list[str]) -> dict``, the batch fields its
    ``forward`` reads for those sentences (``tokens``, ``lengths``, ...); ``fusedembed embed``,
    ``search`` and ``serve`` then use it.
    """


@hookspec
def fusedembed_register_recipes(register):
    """Register YAML recipes: ``register(name, path, *, description="")``.

    ``path`` is the absolute path of a YAML file in the installed package (list it as package
    data). It is addressed as ``<plugin>/<name>``, e.g. ``fusedembed train dualpath/scenes``.
    Its ``_base_`` entries may name files relative to it or other ``<plugin>/<name>`` recipes.
    """


@hookspec
def fusedembed_register_demos(register):
    """Register demos: ``register(name, main, *, description="")``.

    ``main(argv)`` takes the command-line arguments after ``fusedembed demo NAME`` (a list of
    strings; it parses them itself, so ``fusedembed demo NAME --help`` is its help) and returns
    an exit code. A demo runs end to end on data it can make locally (the embedded scenes),
    prints what it measured next to baselines and says what reproduces at its scale.
    """


@hookspec
def fusedembed_register_hooks(register):
    """Register trainer hooks: ``register(name, factory, *, description="")``.

    ``factory(**kwargs)`` returns a ``fusedembed.trainer.Hook``; a recipe adds it with
    ``trainer.hooks: [{name: ..., **kwargs}]``. The trainer calls its ``before_stage``,
    ``before_epoch``, ``after_step``, ``after_epoch``, ``after_stage``, ``on_losses`` and
    ``on_eval`` after the built-in hooks' (logging, NaN guard, evaluation, best model,
    checkpoints, progress); ``self.trainer`` is the running Trainer.
    """
