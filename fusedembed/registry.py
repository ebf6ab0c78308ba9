"""Typed registries: what plugins registered, by kind, and building components from config dicts.

Names: a plugin registers a bare name (``"margin"``); its full name is ``<plugin>/<name>``
(``"multigrain/margin"``). A lookup takes the full name, or the bare name when exactly one
loaded plugin registered it (``"resnet50"`` is ``"builtin/resnet50"``). Two plugins may register
the same bare name; only the bare lookup is then refused, naming both full names.

A component config is ``{"name": <name>, **kwargs}`` (or just the name as a string). The kwargs
are checked against the factory's signature before it is called, so a typo in a recipe is
reported as the key, the nearest accepted one and the full accepted list, not as a
``TypeError`` from deep inside a constructor.

Families: a name with a ``*`` (``register("*", resolve)`` in plugin ``timm``) registers a
resolver for every full name ``<plugin>/<bare>`` whose bare part matches the pattern, for a
library of models too large (or too dynamic) to list. ``resolve(bare)`` returns the factory
for that name, or None when it has none, or raises ``LookupError(why)`` (e.g. the library is
not installed); it is called on the first lookup of each name only. Families resolve full
names only (``timm/convnext_tiny``, never a bare ``convnext_tiny``), and are listed once,
under their pattern (``timm/*``).

Code that builds uses the registries made active with ``with regs.active():`` (see
:func:`fusedembed.plugins.current_registries`); a factory building sub-components calls
``fusedembed.build`` and gets the registries that are building it.
"""

import contextlib
import contextvars
import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from torch import nn
from torch.utils.data import Dataset, Sampler

from .errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")   # a bare name; the full one adds "<plugin>/"
FAMILY_RE = re.compile(r"^[A-Za-z0-9_.*-]*\*[A-Za-z0-9_.*-]*$")   # a family's pattern: a name with "*"


class RegistryError(UserError):
    """Base of the errors below; the message is meant for the person who wrote the config."""


class UnknownNameError(RegistryError, LookupError):
    def __str__(self):  # LookupError would print the message in quotes
        return str(self.args[0])


class DuplicateNameError(RegistryError):
    pass


class AmbiguousNameError(UnknownNameError):
    """A bare name that several plugins registered: the full ``<plugin>/<name>`` is needed."""


class BuildError(RegistryError, TypeError):
    pass


def _is_backbone(obj) -> bool:
    out_dim = getattr(obj, "out_dim", None)
    return isinstance(obj, nn.Module) and isinstance(out_dim, int) and not isinstance(out_dim, bool)


@dataclass(frozen=True)
class Kind:
    name: str                        # singular, as in build("backbone", ...)
    plural: str                      # as in the hook name and `fusedembed list backbones`
    returns: str                     # what a factory must return, for error messages
    check: Optional[Callable[[Any], bool]] = None
    runtime: Tuple[str, ...] = ()    # arguments the trainer passes at build time, never the config

    @property
    def hook(self) -> str:
        return f"fusedembed_register_{self.plural}"


KINDS: Dict[str, Kind] = {k.name: k for k in (
    Kind("backbone", "backbones", "an nn.Module with an int `out_dim` attribute", _is_backbone),
    Kind("loss", "losses", "an nn.Module", lambda o: isinstance(o, nn.Module)),
    Kind("dataset", "datasets", "a torch.utils.data.Dataset", lambda o: isinstance(o, Dataset),
         runtime=("split",)),
    Kind("sampler", "samplers", "a torch.utils.data.Sampler", lambda o: isinstance(o, Sampler),
         runtime=("dataset",)),
    Kind("evaluator", "evaluators", "a callable evaluator(model, loader, *, device)", callable),
    Kind("model", "models", "an nn.Module", lambda o: isinstance(o, nn.Module)),
    Kind("demo", "demos", "a callable demo(argv) -> exit code", callable),
    Kind("hook", "hooks", "a trainer hook (fusedembed.trainer.Hook)",
         lambda o: callable(getattr(o, "after_step", None))),
    Kind("recipe", "recipes", "a YAML file path"),
)}


def kind_of(name: str) -> Kind:
    """The Kind for ``"backbone"`` or ``"backbones"`` (any case)."""
    key = str(name).lower()
    for kind in KINDS.values():
        if key in (kind.name, kind.plural):
            return kind
    raise UnknownNameError(f"unknown kind {name!r}; expected one of: "
                           f"{', '.join(k.plural for k in KINDS.values())}")


def closest(word: str, options) -> Optional[str]:
    found = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, options) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options``, else ``""``: the one hint
    every unknown-name message of fusedembed uses."""
    near = closest(word, options)
    return f" (did you mean {near!r}?)" if near else ""


def _parameters(factory) -> Tuple[Optional[Tuple[str, ...]], Tuple[str, ...], Tuple[str, ...]]:
    """(keyword names accepted or None for **kwargs, required keyword names, required
    positional-only names). A signature Python cannot read accepts anything."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None, (), ()
    accepted, required, positional_only, var_kw = [], [], [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            accepted.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            positional_only.append(p.name)
    return (None if var_kw else tuple(accepted)), tuple(required), tuple(positional_only)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str                        # full name, "<plugin>/<bare name>"
    target: Any                      # the factory, or the Path of a recipe
    plugin: str
    description: str = ""
    accepted: Optional[Tuple[str, ...]] = None
    required: Tuple[str, ...] = ()
    family: bool = False             # target is a resolver of the names matching ``short``

    @property
    def short(self) -> str:
        return self.name.partition("/")[2]

    @property
    def origin(self) -> str:
        if isinstance(self.target, Path):
            return str(self.target)
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', repr(self.target))}"

    def __str__(self):
        return f"plugin {self.plugin!r} ({self.origin})"


def normalize(cfg, kind: str = "component") -> dict:
    """``"resnet18"`` -> ``{"name": "resnet18"}``; checks there is a string ``name``."""
    if isinstance(cfg, str):
        return {"name": cfg}
    if not isinstance(cfg, Mapping):
        raise BuildError(f"a {kind} config must be a mapping with a 'name' key or a name string, "
                         f"got {type(cfg).__name__}: {cfg!r}")
    if not isinstance(cfg.get("name"), str):
        raise BuildError(f"a {kind} config needs a string 'name' key, got keys "
                         f"{sorted(map(str, cfg))}" + (f" with name={cfg['name']!r}" if "name" in cfg else ""))
    return dict(cfg)


class Registry:
    """Named factories of one kind, with the plugin each came from."""

    def __init__(self, kind: Kind, group: Optional["Registries"] = None):
        self.kind = kind
        self._group = group
        self._entries: Dict[str, Entry] = {}          # full name -> entry
        self._bare: Dict[str, List[str]] = {}         # bare name -> full names
        self._families: Dict[str, Entry] = {}         # "<plugin>/<pattern>" -> resolver entry
        self._resolved: Dict[str, Entry] = {}         # full name -> entry a family resolved

    def __repr__(self):
        return f"<Registry {self.kind.plural}: {len(self)} entries>"

    def __contains__(self, name) -> bool:
        if name in self._entries or len(self._bare.get(name, ())) == 1:
            return True
        try:
            return self._from_family(name) is not None
        except RegistryError:
            return False

    def __len__(self) -> int:
        return len(self._entries) + len(self._families)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def add(self, name, target, *, plugin: str, description: str = "") -> Entry:
        return self.insert(self.make_entry(name, target, plugin=plugin, description=description))

    def insert(self, entry: Entry) -> Entry:
        first = (self._families if entry.family else self._entries).get(entry.name)
        if first is not None:
            raise DuplicateNameError(f"{self.kind.name} {entry.name!r} is registered twice: "
                                     f"by {first} and by {entry}")
        if entry.family:
            self._families[entry.name] = entry
            return entry
        self._entries[entry.name] = entry
        self._bare.setdefault(entry.short, []).append(entry.name)
        return entry

    def _check_name(self, name) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RegistryError(f"{self.kind.name} name must be a non-empty string of letters, digits, "
                                f"'_', '-' and '.' (the registry adds '<plugin>/'), got {name!r}")

    def make_entry(self, name, target, *, plugin: str, description: str = "") -> Entry:
        """Validates one registration (name, factory type and signature) without storing it;
        a name with ``*`` is a family (``target`` is then its resolver)."""
        family = isinstance(name, str) and "*" in name and FAMILY_RE.match(name) is not None
        if not family:
            self._check_name(name)
        what = f"{self.kind.name} {'family ' if family else ''}{name!r}"
        if not callable(target):
            raise RegistryError(f"{what}: the {'resolver' if family else 'factory'} must be callable "
                                f"(a function or class), got {type(target).__name__}: {target!r}")
        if not isinstance(description, str):
            raise RegistryError(f"{what}: description must be a string, got {type(description).__name__}")
        if family:
            doc = inspect.cleandoc(getattr(target, "__doc__", None) or "").splitlines()
            return Entry(self.kind.name, f"{plugin}/{name}", target, plugin,
                         description or (doc[0] if doc else ""), family=True)
        accepted, required, positional_only = _parameters(target)
        if positional_only:
            raise RegistryError(f"{what}: a factory is called with keyword arguments only, but "
                                f"{', '.join(positional_only)} is positional-only")
        missing = [a for a in self.kind.runtime if accepted is not None and a not in accepted]
        if missing:
            raise RegistryError(f"{what}: a {self.kind.name} factory must accept the argument(s) "
                                f"{', '.join(missing)} (passed by the trainer); it accepts "
                                f"{', '.join(accepted) or 'nothing'}")
        # Own docstring only: getdoc would give a bare nn.Module subclass nn.Module's text.
        doc = inspect.cleandoc(getattr(target, "__doc__", None) or "").splitlines()
        return Entry(self.kind.name, f"{plugin}/{name}", target, plugin,
                     description or (doc[0] if doc else ""), accepted, required)

    def get(self, name: str) -> Entry:
        """The entry of a full name, or of a bare name exactly one plugin registered."""
        if name in self._entries:
            return self._entries[name]
        full = self._bare.get(name, ()) if isinstance(name, str) else ()
        if len(full) == 1:
            return self._entries[full[0]]
        if full:
            raise AmbiguousNameError(f"{self.kind.name} {name!r} is registered by several plugins: "
                                     f"name one of {', '.join(map(repr, sorted(full)))}")
        entry = self._from_family(name)
        if entry is None:
            raise UnknownNameError(self._unknown(name))
        return entry

    def _family_of(self, name) -> Optional[Entry]:
        plugin, slash, bare = name.partition("/") if isinstance(name, str) else ("", "", "")
        if not slash or not NAME_RE.match(bare):
            return None
        return next((f for f in self._families.values()
                     if f.plugin == plugin and fnmatch.fnmatchcase(bare, f.short)), None)

    def _from_family(self, name) -> Optional[Entry]:
        """The entry a family resolves for the full ``name`` (cached), None when no family
        covers it; UnknownNameError when the family's resolver has no such name."""
        if name in self._resolved:
            return self._resolved[name]
        family = self._family_of(name)
        if family is None:
            return None
        bare = name.partition("/")[2]
        try:
            factory = family.target(bare)
        except LookupError as err:
            raise UnknownNameError(f"{self.kind.name} {name!r}: {err}") from None
        if factory is None:
            raise UnknownNameError(f"unknown {self.kind.name} {name!r}: {family.name} "
                                   f"({family.description or family.origin}) has no {bare!r}")
        entry = self.make_entry(bare, factory, plugin=family.plugin, description=family.description)
        self._resolved[name] = entry
        return entry

    def _unknown(self, name) -> str:
        unavailable = self._group.unavailable if self._group is not None else {}
        plugin = str(name).partition("/")[0]
        if "/" in str(name) and plugin in unavailable:
            return (f"{self.kind.name} {name!r} comes from plugin {plugin!r}, which is not loaded: "
                    f"{unavailable[plugin]}")
        msg = f"unknown {self.kind.name} {name!r}{did_you_mean(name, [*self._bare, *self._entries])}."
        msg += (f" Registered {self.kind.plural}: {', '.join(self.names())}." if len(self)
                else f" No {self.kind.plural} are registered.")
        if unavailable:
            msg += " Plugins not loaded that may provide it: " + "; ".join(
                f"{p} ({why})" for p, why in unavailable.items())
        return msg

    def display_name(self, entry: Entry) -> str:
        """The name to type: the bare name when it is unambiguous, else the full one (always
        for families and the names they resolve)."""
        if entry.family or entry.name not in self._entries:
            return entry.name
        return entry.short if len(self._bare[entry.short]) == 1 else entry.name

    def names(self, pattern: str = "*") -> List[str]:
        """``display_name`` of the entries matching ``pattern``, sorted."""
        return sorted(self.display_name(e) for e in self.entries(pattern))

    def list(self, pattern: str = "*") -> List[str]:
        """Full names whose full or bare name matches a shell-style pattern (``"res*"``), sorted."""
        return [e.name for e in self.entries(pattern)]

    def entries(self, pattern: str = "*") -> List[Entry]:
        """Registered entries and families (each once, as ``<plugin>/<pattern>``) whose full
        or bare name matches ``pattern``; names a family resolved are not listed."""
        return [e for _, e in sorted({**self._entries, **self._families}.items())
                if fnmatch.fnmatchcase(e.name, pattern) or fnmatch.fnmatchcase(e.short, pattern)]

    def check(self, cfg, *, runtime=(), where: str = "") -> List[str]:
        """Problems building ``cfg`` would hit, without building; ``runtime`` names the
        arguments the caller will pass itself. ``where`` (e.g. ``"model.text"``) prefixes them."""
        prefix = f"{where}: " if where else ""
        try:
            cfg = normalize(cfg, self.kind.name)
            entry = self.get(cfg["name"])
        except RegistryError as err:
            return [prefix + str(err)]
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        what = f"{prefix}{self.kind.name} {cfg['name']!r}"     # as the recipe wrote it
        problems = [f"{what}: {k!r} is passed by the trainer, remove it from the config"
                    for k in self.kind.runtime if k in kwargs]
        if entry.accepted is not None:
            for key in kwargs:
                if key not in entry.accepted and key not in self.kind.runtime:
                    problems.append(
                        f"{what} has no argument {key!r}{did_you_mean(key, entry.accepted)}. "
                        f"It accepts: {', '.join(entry.accepted) or 'no arguments'}")
            problems += [f"{what} does not accept {key!r}, which the caller passes"
                         for key in runtime if key not in entry.accepted]
        missing = [a for a in entry.required if a not in kwargs and a not in runtime]
        if missing:
            problems.append(f"{what} needs {', '.join(map(repr, missing))}; set "
                            f"{'it' if len(missing) == 1 else 'them'} in the config")
        return problems

    def build(self, cfg, **runtime):
        """Calls the factory named by ``cfg["name"]`` with the other keys plus ``runtime``
        (``split=`` for datasets, ``dataset=`` for samplers) and checks what it returns."""
        cfg = normalize(cfg, self.kind.name)
        problems = self.check(cfg, runtime=runtime)
        entry = self.get(cfg.pop("name"))
        if problems:
            raise BuildError("\n".join(problems))
        # Nested fusedembed.build() calls inside the factory use these same registries.
        with (self._group.active() if self._group is not None else contextlib.nullcontext()):
            try:
                obj = entry.target(**cfg, **runtime)
            except Exception as err:
                if not hasattr(err, "fusedembed_component"):   # the innermost build names the component
                    err.fusedembed_component = f"{self.kind.name} {entry.name!r}"
                if hasattr(err, "add_note"):
                    err.add_note(f"while building {self.kind.name} {entry.name!r} from {entry}")
                raise
        if self.kind.check is not None and not self.kind.check(obj):
            raise BuildError(f"{self.kind.name} {entry.name!r} from {entry} returned "
                             f"{type(obj).__name__}; a {self.kind.name} factory must return "
                             f"{self.kind.returns}")
        return obj


class RecipeRegistry(Registry):
    """YAML recipe files shipped in plugin packages."""

    def make_entry(self, name, target, *, plugin: str, description: str = "") -> Entry:
        self._check_name(name)
        if not isinstance(target, (str, Path)):
            raise RegistryError(f"recipe {name!r}: expected the path of a YAML file, "
                                f"got {type(target).__name__}: {target!r}")
        path = Path(target)
        if not path.is_absolute():
            raise RegistryError(f"recipe {name!r}: the path must be absolute (e.g. "
                                f"Path(__file__).parent / 'configs' / ...), got {str(path)!r}")
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise RegistryError(f"recipe {name!r}: {path} is not an existing .yaml/.yml file")
        if not isinstance(description, str):
            raise RegistryError(f"recipe {name!r}: description must be a string, "
                                f"got {type(description).__name__}")
        return Entry(self.kind.name, f"{plugin}/{name}", path, plugin, description)

    def display_name(self, entry: Entry) -> str:
        return entry.name           # recipes are shown as <plugin>/<name>, as commands write them

    def path(self, name: str) -> Path:
        return self.get(name).target

    def check(self, cfg, *, runtime=(), where: str = "") -> List[str]:
        raise TypeError("recipes are loaded with fusedembed.load_recipe, not built")

    build = check


class Registries(Mapping):
    """One registry per kind, as collected from the loaded plugins. ``unavailable`` maps the
    plugins that did not load to why, so an unknown name can point at them."""

    def __init__(self, unavailable: Optional[Mapping[str, str]] = None):
        self.unavailable = dict(unavailable or {})
        self._by_kind = {name: (RecipeRegistry if name == "recipe" else Registry)(kind, self)
                         for name, kind in KINDS.items()}

    def __getitem__(self, kind: str) -> Registry:
        return self._by_kind[kind_of(kind).name]

    def __iter__(self):
        return iter(self._by_kind)

    def __len__(self):
        return len(self._by_kind)

    def build(self, kind: str, cfg, **runtime):
        return self[kind].build(cfg, **runtime)

    @contextlib.contextmanager
    def active(self):
        """Makes these the registries that ``fusedembed.build``, the recipe loader and the
        trainer use inside the ``with`` block (a context variable: per thread and task)."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


_active: contextvars.ContextVar = contextvars.ContextVar("fusedembed_registries", default=None)


def active_registries() -> Optional[Registries]:
    """The registries of the innermost ``Registries.active()`` block, or None outside any."""
    return _active.get()


@dataclass(frozen=True)
class Component:
    """Marks a config value as a component of ``kind``: ``{"name": ..., **kwargs}`` or a name.
    ``reserved`` are keys the caller consumes itself (a loss's ``weight``), with their types."""
    kind: str
    reserved: Tuple[Tuple[str, Any], ...] = ()


def spec(kind: str, **reserved):
    """Type annotation for a factory argument that takes a component config, e.g.
    ``def my_model(image: spec("backbone"), ...)``: recipes are then checked down into it."""
    return Annotated[Union[dict, str], Component(kind_of(kind).name, tuple(reserved.items()))]
