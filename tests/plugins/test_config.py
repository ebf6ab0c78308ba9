import textwrap
import time
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import pytest
import torch
import yaml

from fusedembed import RecipeError, load_recipe, save_recipe
from fusedembed.config import apply_overrides, check_components, load_tree, merge, stage_recipes
from fusedembed.recipe import Recipe
from fusedembed.registry import Registries


@pytest.fixture
def write(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path
    return write


BASE = """
    description: base recipe
    model:
      name: image_embedding
      backbone: {name: tiny_cnn, width: 8}
      num_classes: 10
    losses:
      - {name: cross_entropy, weight: 1}
    trainer:
      lr: 1e-3
      epochs: 2
      optimizer: {name: sgd, momentum: 0.8, nesterov: true}
"""


def test_base_inheritance_merges_in_order(write, registries):
    write("base.yaml", BASE)
    write("parents/second.yaml", "trainer: {epochs: 5, batch_size: 8}\nmodel: {num_classes: 3}\n")
    child = write("child.yaml", """
        _base_: [base.yaml, parents/second.yaml]
        trainer: {batch_size: 4}
        description: child
    """)
    r = load_recipe(child)
    assert isinstance(r, Recipe) and r.description == "child"
    assert r.trainer.lr == 1e-3 and isinstance(r.trainer.lr, float)  # YAML 1.2 floats: 1e-3
    assert (r.trainer.epochs, r.trainer.batch_size) == (5, 4)
    assert r.model == {"name": "image_embedding", "backbone": {"name": "tiny_cnn", "width": 8},
                       "num_classes": 3}
    assert r.trainer.optimizer.momentum == 0.8 and r.trainer.scheduler.name == "constant"
    assert r.losses == [{"name": "cross_entropy", "weight": 1.0}]


def test_a_changed_name_starts_the_section_afresh(write, registries):
    write("base.yaml", BASE)
    child = write("child.yaml", """
        _base_: base.yaml
        model: {backbone: {name: resnet18, pool: gem}}
        trainer: {optimizer: {name: adamw}}
    """)
    r = load_recipe(child)
    assert r.model["backbone"] == {"name": "resnet18", "pool": "gem"}    # no width=8 leaked
    assert r.trainer.optimizer.name == "adamw" and r.trainer.optimizer.nesterov is False
    r = load_recipe(child, ["model.backbone.name=tiny_cnn", "model.backbone.depth=2"])
    assert r.model["backbone"] == {"name": "tiny_cnn", "depth": 2}


def test_base_can_name_a_registered_config(write):
    from importlib.metadata import EntryPoint

    from fusedembed.plugins import BUILTIN, GROUP, PluginManager

    base = write("pkg/configs/base.yaml", BASE)
    write("pkg/fe_cfg_plugin.py", f"""
        import fusedembed
        @fusedembed.hookimpl
        def fusedembed_register_recipes(register):
            register("base", {str(base)!r})
    """)
    import sys

    sys.path.insert(0, str(base.parent.parent))
    try:
        registries = PluginManager([BUILTIN, EntryPoint("cfg", "fe_cfg_plugin", GROUP)], env={}).registries
    finally:
        sys.path.remove(str(base.parent.parent))
        sys.modules.pop("fe_cfg_plugin", None)
    child = write("child.yaml", "_base_: cfg/base\ntrainer: {epochs: 7}\n")
    with registries.active():
        r = load_recipe(child)
        assert (r.trainer.epochs, r.description) == (7, "base recipe")
        assert load_recipe("cfg/base").trainer.epochs == 2
        assert load_recipe("base").trainer.epochs == 2        # the bare name: one plugin has it
        with pytest.raises(RecipeError, match=r"unknown recipe 'bsae' \(did you mean 'base'\?\)"):
            load_recipe("bsae")


def test_overrides(write, registries):
    path = write("base.yaml", BASE)
    r = load_recipe(path, ["trainer.lr=0.01", "trainer.optimizer.lr_mult={backbone.*: 0}",
                           "losses.0.weight=2", "trainer.max_steps=null", "trainer.amp=bf16",
                           "trainer.optimizer.betas=[0.8, 0.9]", "model.embed_dim=4",
                           "data.train={name: nope}"], check=False)
    assert r.trainer.lr == 0.01 and r.trainer.optimizer.lr_mult == {"backbone.*": 0.0}
    assert r.losses[0]["weight"] == 2.0 and r.trainer.amp == "bf16"
    assert r.trainer.optimizer.betas == [0.8, 0.9] and r.model["embed_dim"] == 4
    assert r.data.train == {"name": "nope"}  # check=False: schema only


@pytest.mark.parametrize("override, message", [
    ("trainer.lr", "override 'trainer.lr' must look like section.key=value"),
    ("trainer..lr=1", "must look like section.key=value"),
    ("losses.3.weight=1", "losses.3 is not an index of the 1-item list losses"),
    ("trainer.lr.x=1", "trainer.lr is float 0.001, not a mapping"),
    ("trainer.lr=[1", "the value is not valid YAML"),
])
def test_bad_overrides(write, override, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_tree(write("base.yaml", BASE), [override])


def test_unknown_keys_and_types_are_all_reported(write, registries):
    path = write("base.yaml", BASE)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["trainer.lrr=1", "trainer.momentum=0.5", "trainer.epochs=ten",
                           "trainer.amp=fp32", "model.backbone.widht=3", "losses.0.weight=x",
                           "modle={name: x}", "trainer.channels_last=1", "losses.0.smoothing=0.1"])
    msg = str(err.value)
    assert msg.startswith(f"invalid recipe '{path}':\n  - ")
    for expected in [
        "unknown key 'trainer.lrr' (did you mean 'lr'?); trainer takes: epochs, lr, max_steps",
        "unknown key 'trainer.momentum' (did you mean 'trainer.optimizer.momentum'?)",
        "trainer.epochs: expected int, got str 'ten'",
        "trainer.amp: expected one of 'auto', 'bf16', 'fp16', 'off', got 'fp32'",
        "trainer.channels_last: expected bool (write true or false), got int 1",
        "model.backbone: backbone 'tiny_cnn' has no argument 'widht' (did you mean 'width'?). "
        "It accepts: width, depth, in_channels, pool, gem_p",
        "losses[0].weight: expected float, got str 'x'",
        "unknown key 'modle' (did you mean 'model'?); the recipe takes: description, model, losses",
        "losses[0]: loss 'cross_entropy' has no argument 'smoothing' (did you mean 'label_smoothing'?)",
    ]:
        assert expected in msg
    assert len(err.value.problems) == 9


def test_missing_and_unknown_components(write, registries):
    path = write("r.yaml", "losses: [{name: crossentropy}]\ndata: {train: {name: nope, split: train}}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "missing key model" in msg
    assert "losses[0]: unknown loss 'crossentropy' (did you mean 'cross_entropy'?)" in msg
    listed = msg.split("data.train: unknown dataset 'nope'. Registered datasets: ")[1].split(".")[0].split(", ")
    assert {"caption_folder", "karpathy", "scenes"} <= set(listed) and listed == sorted(listed)


@pytest.mark.parametrize("text, message", [
    ("model: a\nmodel: b\n", "invalid YAML: duplicate key 'model'"),
    ("- a\n", "a recipe must be a YAML mapping at the top, got list"),
    ("model: [\n", "invalid YAML"),
    ("_base_: 3\n", "_base_ must be a file/config name or a list of them, got 3"),
    ("_base_: missing.yaml\n", "_base_ 'missing.yaml': recipe file '"),
])
def test_bad_files(write, text, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
        load_tree(write("bad.yaml", text))


def test_base_cycles_are_reported(write):
    write("a.yaml", "_base_: b.yaml\n")
    write("b.yaml", "_base_: a.yaml\n")
    with pytest.raises(RecipeError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_tree(write("a.yaml", "_base_: b.yaml\n"))


def test_unknown_sources(registries):
    with pytest.raises(RecipeError, match="recipe file 'nope.yaml' does not exist"):
        load_recipe("nope.yaml")
    with pytest.raises(RecipeError, match="unknown recipe 'dualpath/nope'"):
        load_recipe("dualpath/nope")


def test_stages_merge_onto_the_recipe(write, registries):
    path = write("staged.yaml", BASE + """
    stages:
      - name: one
        trainer: {optimizer: {lr_mult: {"backbone.*": 0}}}
      - name: two
        trainer: {lr: 0.5, epochs: 1}
        losses: [{name: cross_entropy, weight: 0.5}, {name: bce, weight: 2}]
    """)
    r = load_recipe(path)
    (n1, s1), (n2, s2) = stage_recipes(r)
    assert (n1, s1.trainer.optimizer.lr_mult, s1.trainer.lr) == ("one", {"backbone.*": 0.0}, 1e-3)
    assert (n2, s2.trainer.optimizer.lr_mult, s2.trainer.lr, s2.trainer.epochs) == ("two", {}, 0.5, 1)
    assert [ln["name"] for ln in s2.losses] == ["cross_entropy", "bce"] and s2.stages == []
    assert stage_recipes(load_recipe(write("flat.yaml", BASE)))[0][0] == "main"


def test_stage_errors_name_the_stage(write, registries):
    path = write("staged.yaml", BASE + """
    stages:
      - name: one
        trainr: {lr: 1}
      - name: two
        trainer: {lrr: 1}
        losses: [{name: cross_entropi}]
      - {trainer: {}}
    """)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "stages[0] (one): unknown key 'trainr' (did you mean 'trainer'?); a stage may set" in msg
    assert "stages[1] (two): unknown key 'trainer.lrr' (did you mean 'lr'?)" in msg
    assert "stages[1] (two): losses[0]: unknown loss 'cross_entropi'" in msg
    assert "stages[2]: expected a mapping with a string 'name'" in msg


def test_off_is_a_word_and_booleans_are_true_or_false(write, registries, tmp_path):
    # YAML 1.1 read off/on/yes/no as booleans: `trainer.amp=off` was refused as "got False"
    r = load_recipe(write("base.yaml", BASE + "      amp: off\n"), ["trainer.channels_last=False"])
    assert r.trainer.amp == "off" and r.trainer.channels_last is False
    assert load_recipe(save_recipe(r, tmp_path / "run")) == r
    assert load_recipe(write("b.yaml", BASE), ["trainer.amp=off"]).trainer.amp == "off"
    with pytest.raises(RecipeError, match=r"trainer.channels_last: expected bool \(write true or false\), "
                                          r"got str 'no'"):
        load_recipe(write("c.yaml", BASE), ["trainer.channels_last=no"])


def test_resolved_config_is_saved_and_loads_back(write, registries, tmp_path):
    r = load_recipe(write("base.yaml", BASE), ["trainer.lr=1e-5", "data.test=null"])
    saved = save_recipe(r, tmp_path / "run")
    assert saved == tmp_path / "run" / "config.yaml"
    again = load_recipe(saved)
    assert again == r and again.trainer.lr == 1e-5
    assert "lr: 1.0e-05" in saved.read_text()


def test_merge_and_apply_overrides_do_not_modify_inputs():
    base = {"a": {"b": [1, 2], "c": {"name": "x", "k": 1}}}
    child = {"a": {"c": {"k": 2}}}
    merged = merge(base, child)
    assert merged == {"a": {"b": [1, 2], "c": {"name": "x", "k": 2}}}
    assert base["a"]["c"]["k"] == 1 and merged["a"]["b"] is not base["a"]["b"]
    out = apply_overrides(base, ["a.b.0=5", "a.new.deep=1"])
    assert out["a"]["b"] == [5, 2] and out["a"]["new"] == {"deep": 1} and base["a"]["b"] == [1, 2]


def test_split_loss():
    from fusedembed.recipe import split_loss

    assert split_loss({"name": "ce", "weight": 2, "inputs": {"logits": "img_logits"}, "eps": 0.1}) == (
        {"name": "ce", "eps": 0.1}, 2.0, {"logits": "img_logits"})
    assert split_loss("ce") == ({"name": "ce"}, 1.0, {})


def laughs(levels: int) -> str:
    """A "billion laughs" value: each level is nine aliases of the one before (9**levels
    strings from a few hundred bytes), as one YAML flow mapping."""
    items = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


def with_base(extra: str) -> str:
    return textwrap.dedent(BASE).replace("description: base recipe\n", "") + extra


def test_alias_expansion_is_bounded(write, registries):
    # 9**6 = 531,441 strings (the 449-byte recipe of the issue had 9**9: `config show` ran past
    # 100 s and 3.9 GB expanding it); refused before anything walks the expansion.
    path = write("laughs.yaml", with_base(f"description: {laughs(6)}\n"))
    with pytest.raises(RecipeError, match=rf"^{path}: YAML aliases expand it past 100,000 nodes \(each "
                                          r"\*alias or <<: merge repeats its &anchor's whole content\)"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"^override description: YAML aliases expand it past 100,000"):
        load_recipe(write("base.yaml", BASE), [f"description={laughs(6)}"])
    with pytest.raises(RecipeError, match="YAML aliases expand it past"):
        load_tree(write("self.yaml", with_base("loop: &loop [*loop]\n")))      # contains itself
    # Small, legitimate aliases keep working.
    small = with_base("stages:\n  - {name: one}\n  - {name: two, trainer: {optimizer: *opt, lr: 0.5}}\n")
    small = small.replace("optimizer: {name: sgd", "optimizer: &opt {name: sgd")
    r = load_recipe(write("small.yaml", small))
    assert r.stages[1]["trainer"]["optimizer"]["momentum"] == 0.8 and r.trainer.optimizer.momentum == 0.8


def merge_laughs(levels: int) -> str:
    """Merge keys doubling at each level: ``a{i}: &a{i} {<<: [*a{i-1}, *a{i-1}]}`` (the result
    has one key, but PyYAML's flattening copied 2**levels entries)."""
    lines = ["a0: &a0 {k: 1}"] + [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_merge_keys_are_bounded(write, registries):
    # 40 levels: 2**40 entries copied before (24 levels already took a minute and GBs; the
    # alias limit saw nothing, as the loaded value is small). Now each level copies 2.
    start = time.perf_counter()
    tree = load_tree(write("merges.yaml", with_base("extra:\n" + textwrap.indent(merge_laughs(40), "  "))))
    assert time.perf_counter() - start < 5
    assert tree["extra"]["a39"] == {"k": 1}
    # PyYAML's merge semantics kept (own keys win over merged ones, earlier merges over later
    # ones), key order included.
    text = "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc: {<<: [*a, *b], z: 3, w: 3}\n"
    c = load_tree(write("m.yaml", with_base(text)))["c"]
    assert list(c.items()) == list(yaml.safe_load(text)["c"].items()) == [
        ("y", 1), ("z", 3), ("x", 1), ("w", 3)]
    with pytest.raises(RecipeError, match="duplicate key 'x'"):
        load_tree(write("d.yaml", with_base("a: &a {x: 1}\nc: {<<: {x: 2, x: 3}}\n")))
    # Merges that really copy (distinct keys, each level one more): counted like aliases.
    chain = ["m0: &m0 {k0: 0}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: {i}}}" for i in range(1, 500)]
    path = write("chain.yaml", with_base("\n".join(chain) + "\n"))
    with pytest.raises(RecipeError, match=rf"^{path}: YAML aliases expand it past 100,000 nodes"):
        load_tree(path)
    with pytest.raises(RecipeError, match=r"^override extra: YAML aliases expand it past 100,000"):
        load_tree(write("base.yaml", BASE), ["extra={" + ", ".join(chain) + "}"])


def test_nesting_depth_is_bounded(write, registries):
    # 500 levels of "[" (1 KB) ended in a RecursionError traceback; 60 levels stay fine.
    tree = load_tree(write("ok.yaml", with_base("extra: " + "[" * 60 + "1" + "]" * 60 + "\n")))
    assert str(tree["extra"]) == "[" * 60 + "1" + "]" * 60
    path = write("deep.yaml", with_base("extra: " + "[" * 500 + "]" * 500 + "\n"))
    with pytest.raises(RecipeError, match=rf"^{path}: YAML nested more than 100 levels deep$"):
        load_tree(path)
    with pytest.raises(RecipeError, match=r"^override extra: YAML nested more than 100 levels deep$"):
        load_tree(write("base.yaml", BASE), ["extra=" + "{a: " * 200 + "1" + "}" * 200])


def test_scalar_arguments_of_factories_are_type_checked(write, registries):
    with pytest.raises(RecipeError) as err:
        load_recipe(write("base.yaml", BASE), ["model.backbone.width=eight", "model.backbone.gem_p=x"])                    # `width=eight` passed `config show`
    assert err.value.problems == ["model.backbone.width: expected int, got str 'eight'",
                                  "model.backbone.gem_p: expected float, got str 'x'"]

    def factory(width: int, scale: float = 1.0, flip: bool = False, mode: Literal["a", "b"] = "a",
                sizes: List[int] = (), limit: int = None, tag: Optional[str] = None, extra: Any = None,
                either: Union[int, str] = 0, count: int | None = None, widths: Sequence[int] = (),
                lists: Optional[Dict[str, str]] = None):
        return torch.nn.Identity()

    toy = Registries()
    toy["model"].add("toy", factory, plugin="t")
    ok = {"name": "toy", "width": 3, "scale": 2, "flip": True, "mode": "b", "sizes": [1, 2], "limit": None,
          "tag": None, "extra": object(), "either": "x", "count": 2, "widths": [1, 2], "lists": {"a": "b"}}
    assert check_components([("model", "model", ok)], toy) == []
    # `int | None`, Sequence[int] and Dict[str, str] passed unchecked (dualpath/textcnn widths=[1, x]).
    bad = {"name": "toy", "width": 2.5, "flip": 1, "mode": "c", "sizes": [1, "x"], "either": [1],
           "count": "x", "widths": [1, "x"], "lists": {"a": 1}}
    assert check_components([("model", "model", bad)], toy) == [
        "model.width: expected int, got float 2.5", "model.flip: expected bool (write true or false), got int 1",
        "model.mode: expected one of 'a', 'b', got 'c'", "model.sizes[1]: expected int, got str 'x'",
        "model.either: expected int or str, got list [1]", "model.count: expected int, got str 'x'",
        "model.widths[1]: expected int, got str 'x'", "model.lists.a: expected str, got int 1"]
    assert check_components([("model", "model", {"name": "toy", "width": 1, "widths": "12"})], toy) == [
        "model.widths: expected a list, got str '12'"]
    # A wrong type is reported beside an unknown argument (it was hidden until that was fixed).
    assert check_components([("model", "model", {"name": "toy", "width": "x", "wdith": 3})], toy) == [
        "model: model 'toy' has no argument 'wdith' (did you mean 'width'?). It accepts: width, scale, flip, "
        "mode, sizes, limit, tag, extra, either, count, widths, lists", "model.width: expected int, got str 'x'"]
    assert check_components([("model", "model", {"name": "toyy", "width": "x"})], toy) == [
        "model: unknown model 'toyy' (did you mean 'toy'?). Registered models: toy."]
