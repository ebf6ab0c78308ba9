"""YAML recipes: ``_base_`` inheritance, dotted overrides, typed validation.

Resolution order: the parents listed in ``_base_`` (merged in order, each resolved the same
way), then the file itself, then the overrides (``trainer.lr=0.01 model.text.name=textcnn``).
Mappings merge key by key and lists are replaced, except that a mapping whose ``name`` changes
starts afresh: the keys of one backbone (or optimizer) never leak into another. The result is
checked against :class:`fusedembed.recipe.Recipe`, and every component against the factory it
names (argument names, and the values of arguments it annotates with a scalar type); all
problems are reported together. YAML aliases and merge keys (``<<: *anchor``) may not expand
a file (or an override) past ``MAX_ALIASED_NODES`` nodes, nor may it nest past ``MAX_DEPTH``
levels.
"""

import collections.abc
import copy
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .errors import UserError
from .plugins import current_registries
from .recipe import STAGE_SECTIONS, Recipe, trainer_range_problems
from .registry import KINDS, Component, Registries, RegistryError, did_you_mean

RESOLVED_NAME = "config.yaml"


class RecipeError(UserError, ValueError):
    """One or more problems with a recipe; ``problems`` lists them one per line."""

    def __init__(self, problems: Union[str, Sequence[str]], source=None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid recipe {str(source)!r}" if source is not None else "invalid recipe"
        super().__init__(self.problems[0] if len(self.problems) == 1 and source is None else
                         f"{head}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class _AliasLimit(yaml.YAMLError):
    """Merge keys (``<<: *anchor``) copied more than MAX_ALIASED_NODES entries."""


class _TooDeep(yaml.YAMLError):
    """Collections nested more than MAX_DEPTH levels."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads ``1e-4`` as a float (YAML 1.2, not 1.1's string), rejects
    duplicate keys instead of silently keeping the last, and bounds merge keys."""

    merged = 0      # mapping entries copied by merge keys so far in this document
    depth = 0

    def compose_node(self, parent, index):
        # PyYAML composes (and later code merges, checks and dumps) nested collections by
        # recursion: 500 levels of "[" (1 KB) ended `recipe show` in a RecursionError.
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep()
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node):
        # Every mapping passes here before it is built (and each merged one when merged).
        seen = set()
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {k.value!r}",
                                                            node.start_mark)
                seen.add(k.value)
        # PyYAML prepends each merged mapping's entries without removing repeated keys, in
        # place on the shared node: `b: &b {<<: [*a, *a]}`, `c: &c {<<: [*b, *b]}`, … doubles
        # the list at every level (a 528-byte file took 3.5 s, 24 levels more a minute and
        # GBs) although the result has one key. Keeping only the entry that wins for each key
        # leaves every mapping as long as its distinct keys; the copies made are counted
        # against the same limit as aliases.
        own = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
        super().flatten_mapping(node)   # merged mappings pass through this method first
        if len(node.value) == own:
            return
        self.merged += len(node.value) - own
        if self.merged > MAX_ALIASED_NODES:
            raise _AliasLimit()
        kept, at = [], {}
        for pair in node.value:     # as a dict: first position, last value
            key = pair[0]
            ident = (key.tag, key.value) if isinstance(key, yaml.ScalarNode) else id(key)
            if ident in at:
                kept[at[ident]] = pair
            else:
                at[ident] = len(kept)
                kept.append(pair)
        node.value = kept


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))
# YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no, so `trainer.amp=off`
# became False and was refused as "not one of 'auto', 'bf16', 'fp16', 'off'".
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


# YAML aliases (*a) repeat their anchor's content without copying it: a few hundred bytes of
# nested aliases ("billion laughs") stand for billions of nodes, which validation, messages
# and dumping would expand. Past this many nodes, counted with the repeats, a recipe that uses
# aliases is refused (one without aliases is as large as its file, and is not limited).
MAX_ALIASED_NODES = 100_000
MAX_DEPTH = 100     # nesting levels of a recipe (those of the packages nest 5 or 6)


def check_expansion(data, where: str) -> None:
    """Raises a RecipeError naming ``where`` when aliases expand ``data`` past
    ``MAX_ALIASED_NODES`` nodes (or make it contain itself). Linear in the file's size: shared
    containers are re-counted only up to the limit."""
    stack, seen, count, aliased = [data], set(), 0, False
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, (dict, list)):
            if id(node) in seen:
                aliased = True
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)
        if aliased and count > MAX_ALIASED_NODES:
            raise _too_large(where)


def _too_deep(where: str) -> "RecipeError":
    return RecipeError(f"{where}: YAML nested more than {MAX_DEPTH} levels deep")


def _too_large(where: str) -> "RecipeError":
    return RecipeError(f"{where}: YAML aliases expand it past {MAX_ALIASED_NODES:,} nodes (each *alias "
                       "or <<: merge repeats its &anchor's whole content); write the content out, or "
                       "share settings with _base_")


def parse_value(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except OSError as err:
        raise RecipeError(f"cannot read {path}: {err.strerror}") from None
    except _AliasLimit:
        raise _too_large(str(path)) from None
    except _TooDeep:
        raise _too_deep(str(path)) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from None
    check_expansion(data, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping at the top, got {type(data).__name__}")
    return data


def resolve_source(source, relative_to: Optional[Path] = None) -> Path:
    """The YAML file for a path (relative to ``relative_to``, else the working directory) or for
    a registered recipe: ``<plugin>/<name>``, or the bare name when one plugin has it."""
    text = str(source)
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if path.is_file():
        return path.resolve()
    if isinstance(source, Path) or path.suffix in (".yaml", ".yml"):
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        return current_registries()["recipe"].path(text)
    except RegistryError as err:
        raise RecipeError(f"{err} (a recipe is a YAML file or a registered <plugin>/<name>; "
                          f"see `fusedembed list recipes`)") from None


def merge(base, child):
    """``child`` on top of ``base`` (new objects; inputs are not modified)."""
    if not (isinstance(base, Mapping) and isinstance(child, Mapping)) or _renamed(base, child):
        return copy.deepcopy(child)
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
    return out


def _renamed(base: Mapping, child: Mapping) -> bool:
    return "name" in child and base.get("name") != child["name"]


def load_tree(source, overrides: Sequence[str] = ()) -> dict:
    """The merged, overridden recipe as plain data, not yet validated."""
    return apply_overrides(_with_bases(resolve_source(source), ()), overrides)


def _with_bases(path: Path, chain: Tuple[Path, ...]) -> dict:
    if path in chain:
        raise RecipeError("_base_ cycle: " + " -> ".join(str(p) for p in chain + (path,)))
    data = read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"{path}: _base_ must be a file/config name or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:
        try:
            parent = resolve_source(base, relative_to=path.parent)
        except RecipeError as err:
            raise RecipeError(f"{path}: _base_ {base!r}: {err}") from None
        merged = merge(merged, _with_bases(parent, chain + (path,)))
    return merge(merged, data)


def parse_override(text: str) -> Tuple[List[str], Any]:
    key, sep, value = str(text).partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise RecipeError(f"override {text!r} must look like section.key=value (e.g. trainer.lr=0.01)")
    try:
        parsed = parse_value(value)
    except _AliasLimit:
        raise _too_large(f"override {key.strip()}") from None
    except _TooDeep:
        raise _too_deep(f"override {key.strip()}") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"override {text!r}: the value is not valid YAML: {err}") from None
    check_expansion(parsed, f"override {key.strip()}")
    return keys, parsed


def apply_overrides(tree: dict, overrides: Sequence[str]) -> dict:
    """Sets each ``a.b.c=value`` (value read as YAML: ``0.01``, ``true``, ``[1, 2]``,
    ``{name: resnet18}``); a number indexes a list (``losses.0.weight=2``)."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        keys, value = parse_override(text)
        node = tree
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth + 1])
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                    raise RecipeError(f"override {text!r}: {where} is not an index of the "
                                      f"{len(node)}-item list {'.'.join(keys[:depth])}")
                key = int(key)
            elif not isinstance(node, dict):
                raise RecipeError(f"override {text!r}: {'.'.join(keys[:depth])} is "
                                  f"{type(node).__name__} {node!r}, not a mapping")
            if last:
                if key == "name" and isinstance(node, dict) and node.get("name") != value:
                    node.clear()  # same rule as merging: a new name starts the section afresh
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return tree


# `int | None` is a types.UnionType, not a typing.Union; YAML gives a list for a Sequence.
_UNIONS = (Union, types.UnionType)
_LISTS = (list, collections.abc.Sequence)


class _Validator:
    """Checks plain data against a type (dataclasses, List, Dict, Optional, Literal, scalars,
    components), collecting every problem and every component met."""

    def __init__(self):
        self.problems: List[str] = []
        self.components: List[Tuple[str, str, dict]] = []   # (where, kind, cfg without reserved)

    def check(self, value, tp, where: str):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin is typing.Annotated:
            comp = next((m for m in args[1:] if isinstance(m, Component)), None)
            return self.component(value, comp, where) if comp else self.check(value, args[0], where)
        if origin in _UNIONS:
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:
                return self.check(value, options[0], where)
            for option in options:
                trial = _Validator()
                checked = trial.check(value, option, where)
                if not trial.problems:
                    self.components += trial.components
                    return checked
            return self.fail(where, f"expected {' or '.join(_type_name(o) for o in options)}, "
                                    f"got {type(value).__name__} {value!r}")
        if origin is typing.Literal:
            if value in args:
                return value
            return self.fail(where, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        if dataclasses.is_dataclass(tp):
            return self.dataclass(value, tp, where)
        if origin in _LISTS:
            if not isinstance(value, list):
                return self.fail(where, f"expected a list, got {type(value).__name__} {value!r}")
            return [self.check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                return self.fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
            return {k: self.check(v, args[1], f"{where}.{k}") for k, v in value.items()}
        ok = (isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)
              or tp is float and isinstance(value, int) and not isinstance(value, bool))
        if ok:
            return float(value) if tp is float else value
        hint = " (write true or false)" if tp is bool else ""
        return self.fail(where, f"expected {_type_name(tp)}{hint}, got {type(value).__name__} {value!r}")

    def fail(self, where: str, message: str):
        self.problems.append(f"{where or 'recipe'}: {message}")

    def dataclass(self, value, cls, where: str):
        if not isinstance(value, dict):
            return self.fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls, include_extras=True)
        out, prefix = {}, f"{where}." if where else ""
        for key, item in value.items():
            if key not in fields:
                self.problems.append(f"unknown key {prefix + str(key)!r}{_nearest_key(key, fields)}; "
                                     f"{where or 'the recipe'} takes: {', '.join(fields)}")
            else:
                out[key] = self.check(item, hints[key], prefix + key)
        for name, f in fields.items():
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in value and no_default:
                self.problems.append(f"missing key {prefix}{name}")
        try:
            return cls(**out)
        except TypeError:  # a required key was missing: already reported
            return None

    def component(self, value, comp: Component, where: str):
        value = {"name": value} if isinstance(value, str) else value
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return self.fail(where, f"expected a {comp.kind} as {{name: ..., <arguments>}} or a "
                                    f"name, got {value!r}")
        reserved, value = dict(comp.reserved), dict(value)
        for key, tp in reserved.items():
            if key in value:
                value[key] = self.check(value[key], tp, f"{where}.{key}")
        self.components.append((where, comp.kind, {k: v for k, v in value.items() if k not in reserved}))
        return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _schema_keys(cls, prefix: str = "") -> List[str]:
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _schema_keys(tp, f"{prefix}{f.name}.")
    return keys


def _nearest_key(key, fields) -> str:
    """A near name in the same section, else the same name in another section of the recipe
    (``trainer.momentum`` -> ``trainer.optimizer.momentum``)."""
    elsewhere = [k for k in _schema_keys(Recipe) if k.rsplit(".", 1)[-1] == key]
    return did_you_mean(key, fields) or (f" (did you mean {elsewhere[0]!r}?)" if elsewhere else "")


def check_components(found, registries: Registries) -> List[str]:
    """Problems of each ``(where, kind, cfg)`` against its registered factory: the arguments
    it annotates with a scalar type (int, float, bool, str, Literal, Optional/Union/List of
    them) must hold one, and those annotated with ``fusedembed.registry.spec`` are descended
    into."""
    problems = []
    for where, kind, cfg in found:
        registry = registries[kind]
        problems += registry.check(cfg, runtime=KINDS[kind].runtime, where=where)
        try:
            factory = registry.get(cfg["name"]).target
        except RegistryError:       # an unknown name, reported: no arguments to check against
            continue
        nested = _Validator()       # also beside an unknown argument: all problems at once
        for arg, tp in _annotations(factory).items():
            if arg in cfg:
                nested.check(cfg[arg], tp, f"{where}.{arg}")
        problems += nested.problems + check_components(nested.components, registries)
    return problems


def _annotations(factory) -> dict:
    """The factory's argument annotations that the validator can check (a ``None`` default
    admits None, as an implicit Optional)."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
        params = inspect.signature(target).parameters
    except Exception:  # unresolvable annotations: nothing to check
        return {}
    out = {}
    for name, tp in hints.items():
        if name in params and (_has_component(tp) or _scalar(tp)):
            out[name] = Optional[tp] if params[name].default is None else tp
    return out


_SCALARS = (int, float, bool, str)


def _scalar(tp) -> bool:
    """int/float/bool/str, a Literal, or Optional/Union (``int | None`` too)/List/Sequence/Dict
    of those: types whose YAML value the validator checks exactly."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS or origin is typing.Literal:
        return True
    if origin in _UNIONS:
        return all(a is type(None) or _scalar(a) for a in args)
    if origin is dict:
        return len(args) == 2 and _scalar(args[1])
    return origin in _LISTS and len(args) == 1 and _scalar(args[0])


def _has_component(tp) -> bool:
    if typing.get_origin(tp) is typing.Annotated:
        return any(isinstance(m, Component) for m in typing.get_args(tp)[1:])
    return any(_has_component(a) for a in typing.get_args(tp))


def validate(tree: dict, *, check: bool = False, source=None) -> Recipe:
    """The typed Recipe for ``tree``; with ``check``, components are checked too, against the
    current registries."""
    registries = current_registries() if check else None
    recipe, problems = _validate(tree, registries, "")
    if not problems:  # stages are checked on top of a valid recipe
        for i, stage in enumerate(tree.get("stages") or []):
            problems += _validate_stage(tree, stage, i, registries)
    if problems:
        raise RecipeError(problems, source)
    return recipe


def _validate(tree, registries, where):
    v = _Validator()
    recipe = v.check(tree, Recipe, where)
    problems = list(v.problems)
    if not problems:
        problems += trainer_range_problems(recipe.trainer)
    if registries is not None:
        problems += check_components(v.components, registries)
    return recipe, problems


def _validate_stage(tree: dict, stage, index: int, registries) -> List[str]:
    where = f"stages[{index}]"
    if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
        return [f"{where}: expected a mapping with a string 'name', got {stage!r}"]
    where += f" ({stage['name']})"
    unknown = [k for k in stage if k != "name" and k not in STAGE_SECTIONS]
    if unknown:
        return [f"{where}: unknown key {k!r}{did_you_mean(k, STAGE_SECTIONS)}; a stage may set: "
                f"name, {', '.join(STAGE_SECTIONS)}" for k in unknown]
    _, problems = _validate(_stage_tree(tree, stage), registries, "")
    return [f"{where}: {p}" for p in problems]


def _stage_tree(tree: dict, stage: dict) -> dict:
    base = {k: v for k, v in tree.items() if k != "stages"}
    return merge(base, {k: v for k, v in stage.items() if k != "name"})


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def stage_recipes(recipe: Recipe) -> List[Tuple[str, Recipe]]:
    """``[(stage name, full Recipe)]`` in order: each stage merged onto the recipe (stage II
    does not inherit stage I's changes). A recipe without stages is one stage, "main"."""
    if not recipe.stages:
        return [("main", recipe)]
    tree = to_dict(recipe)
    return [(s["name"], validate(_stage_tree(tree, s))) for s in recipe.stages]


def load_recipe(source, overrides: Sequence[str] = (), *, check: bool = True) -> Recipe:
    """The validated Recipe of ``source`` (a YAML path or a registered ``<plugin>/<name>``) with
    dotted ``overrides`` applied. ``check=False`` skips checking components against the
    registries (the schema is always checked). Raises RecipeError listing every problem."""
    return validate(load_tree(source, overrides), check=check, source=source)


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=False)


def save_recipe(recipe: Recipe, run_dir) -> Path:
    """Writes the resolved recipe to ``<run_dir>/config.yaml`` (what the run really used; it
    loads back to the same Recipe) and returns the path."""
    path = Path(run_dir) / RESOLVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(dump(recipe), encoding="utf-8")
    tmp.replace(path)
    return path
