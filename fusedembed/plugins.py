"""Finds, loads and isolates plugins; collects what they register into typed registries; the
registries code builds with (``current_registries``, ``build``).

Plugins come from the entry-point group ``fusedembed``. The core's own plugins are among them:
``builtin = "fusedembed.builtin"`` and ``timm = "fusedembed.timm_backbones"`` (the family
``timm/*``), loaded from their entry points, and from identical entry points made here when
fusedembed runs from a source tree whose metadata lacks them. Each plugin is
imported, registered with pluggy and asked for its registrations on its own, so one that raises
is recorded (name and error) and skipped while the others load.

Environment:
  FUSEDEMBED_DISABLE_PLUGINS=a,b   do not import the named plugins (``builtin`` included)
  FUSEDEMBED_PLUGINS_ONLY=a,b      import only the named plugins (name ``builtin`` to keep it)
"""

import importlib.metadata as metadata
import os
import traceback
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional

import pluggy

from . import hookspecs
from ._version import __version__
from .registry import KINDS, Registries, Registry, RegistryError, active_registries, did_you_mean

GROUP = "fusedembed"
BUILTIN = metadata.EntryPoint("builtin", "fusedembed.builtin", GROUP)
CORE = (BUILTIN, metadata.EntryPoint("timm", "fusedembed.timm_backbones", GROUP))
DISABLE_ENV = "FUSEDEMBED_DISABLE_PLUGINS"
ONLY_ENV = "FUSEDEMBED_PLUGINS_ONLY"
HOOKS = {kind.hook: kind for kind in KINDS.values()}


@dataclass
class PluginInfo:
    name: str
    value: str                        # the entry point's target, "module" or "module:attr"
    dist: Optional[str] = None        # distribution that declared it
    version: Optional[str] = None
    status: str = "pending"           # loaded | failed | disabled
    error: Optional[str] = None       # one line, "ImportError: ..."
    traceback: Optional[str] = None
    registered: Dict[str, List[str]] = field(default_factory=dict)   # plural kind -> names

    @property
    def ok(self) -> bool:
        return self.status == "loaded"


def _names(env: Mapping[str, str], var: str) -> Optional[List[str]]:
    if var not in env:
        return None
    return [n.strip() for n in env[var].split(",") if n.strip()]


def _dist_of(ep) -> tuple:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def discover() -> List[metadata.EntryPoint]:
    """The group's entry points: built-in first, then by name (and target), the core's
    added where the metadata lacks them. An entry point listed twice (one distribution seen on
    two sys.path entries) counts once."""
    found, seen = [], set()
    for ep in metadata.entry_points(group=GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            found.append(ep)
    found += [core for core in CORE if not any(ep.name == core.name for ep in found)]
    return sorted(found, key=lambda ep: (ep.name != BUILTIN.name, ep.name, ep.value))


class PluginManager:
    """Loads the plugins of ``entry_points`` (default: the installed ones) once, on construction.

    ``plugins`` lists every plugin seen, with its status and what it registered (bare names);
    ``registries`` holds what the loaded ones registered.
    """

    def __init__(self, entry_points: Optional[Iterable] = None, *, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: Dict[str, PluginInfo] = {}
        self.notes: List[str] = []
        self.registries = Registries()
        eps = discover() if entry_points is None else list(entry_points)
        only, disabled = _names(env, ONLY_ENV), _names(env, DISABLE_ENV) or []
        for var, names in ((ONLY_ENV, only or []), (DISABLE_ENV, disabled)):
            known = [ep.name for ep in eps]
            for name in names:
                if name not in known:
                    self.notes.append(f"{var} names {name!r}, which is not installed"
                                      f"{did_you_mean(name, known)}")
        for ep in eps:
            dist, version = _dist_of(ep)
            if dist is None and any(ep.value == core.value for core in CORE):
                dist, version = "fusedembed", __version__
            info = PluginInfo(ep.name, ep.value, dist, version)
            if ep.name in self.plugins:
                first = self.plugins[ep.name]
                self.notes.append(f"plugin name {ep.name!r} is declared twice, by {first.dist} "
                                  f"({first.value}) and by {dist} ({ep.value}); the second is ignored")
            elif only is not None and ep.name not in only:
                self._disable(info, ONLY_ENV)
            elif ep.name in disabled:
                self._disable(info, DISABLE_ENV)
            else:
                self._load(ep, info)

    def _disable(self, info: PluginInfo, var: str):
        info.status, info.error = "disabled", f"disabled by {var}"
        self.plugins[info.name] = info
        self.registries.unavailable[info.name] = info.error  # named by unknown-name errors

    def _fail(self, info: PluginInfo, err: BaseException) -> PluginInfo:
        info.status, info.error = "failed", f"{type(err).__name__}: {err}"
        info.traceback = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        self.plugins[info.name] = info
        self.registries.unavailable[info.name] = info.error
        return info

    def _load(self, ep, info: PluginInfo) -> PluginInfo:
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a plugin calling sys.exit() on import is broken too
            return self._fail(info, err)
        return self.register(plugin, info)

    def register(self, plugin, info) -> PluginInfo:
        """Registers a plugin object (usually a module) under ``info`` (a PluginInfo or a name)
        and collects its registrations. Entry-point plugins, built-in included, come through
        here; call it directly only in tests or notebooks."""
        if isinstance(info, str):
            info = PluginInfo(info, getattr(plugin, "__name__", repr(plugin)))
        try:
            self.pm.register(plugin, name=info.name)
            self._check_hooks(plugin)
            staged = self._collect(plugin, info.name)
        except Exception as err:
            if self.pm.get_plugin(info.name) is plugin:  # pluggy may have added it half-way
                self.pm.unregister(name=info.name)
            return self._fail(info, err)
        info.status = "loaded"
        self.plugins[info.name] = info
        for entry in staged:   # full names carry the plugin's: no two plugins can collide
            self.registries[entry.kind].insert(entry)
            info.registered.setdefault(KINDS[entry.kind].plural, []).append(entry.short)
        return info

    def _check_hooks(self, plugin):
        unmarked = [attr for attr in dir(plugin) if attr.startswith("fusedembed_")
                    and callable(getattr(plugin, attr, None))
                    and self.pm.parse_hookimpl_opts(plugin, attr) is None]
        if unmarked:
            raise pluggy.PluginValidationError(plugin, f"{', '.join(unmarked)} lacks the "
                                                       f"@fusedembed.hookimpl decorator")
        # pluggy's check_pending, for this plugin only so the culprit is named. An impl marked
        # optionalhook=True may target a hook of a newer fusedembed; it is then ignored.
        bad = [h.name for h in self.pm.get_hookcallers(plugin) or () if not h.has_spec() and any(
            i.plugin is plugin and not i.optionalhook for i in h.get_hookimpls())]
        if bad:
            raise pluggy.PluginValidationError(plugin, "; ".join(
                f"unknown hook {h!r}{did_you_mean(h, HOOKS)}" for h in bad))

    def _collect(self, plugin, plugin_name: str) -> list:
        """Calls each of the plugin's hooks with a ``register`` that validates and stages; the
        entries are committed only if every hook of the plugin succeeds."""
        staged, seen = [], set()
        for caller in self.pm.get_hookcallers(plugin) or ():
            kind = HOOKS.get(caller.name)
            if kind is None:  # an optional hook this version does not know
                continue

            def register(name, target, *, description="", _registry=self.registries[kind.name]):
                entry = _registry.make_entry(name, target, plugin=plugin_name, description=description)
                if (entry.kind, entry.name) in seen:
                    raise RegistryError(f"{entry.kind} {entry.short!r} is registered twice "
                                        f"by plugin {plugin_name!r}")
                seen.add((entry.kind, entry.name))
                staged.append(entry)

            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if impl.hookwrapper or impl.wrapper:
                    raise pluggy.PluginValidationError(plugin, f"{caller.name}: hook wrappers "
                                                               f"are not supported")
                result = impl.function(**{arg: register for arg in impl.argnames})
                if result is not None:
                    raise RegistryError(f"{caller.name} returned {type(result).__name__}; it must "
                                        f"call register(name, ...) and return None")
        return staged

    def failed(self) -> List[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "failed"]


_default: Optional[PluginManager] = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager over the installed plugins, created on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default


def reset_plugin_manager() -> None:
    """Forgets the process-wide manager, so the next use rediscovers plugins (tests, notebooks
    after installing a plugin)."""
    global _default
    _default = None


def current_registries() -> Registries:
    """The registries code builds with: those of the innermost ``with regs.active():`` (a
    factory being built is inside its registries' block), else the installed plugins'."""
    regs = active_registries()
    return regs if regs is not None else get_plugin_manager().registries


def get_registry(kind: str) -> Registry:
    """The current registry of ``kind`` (``"backbone"`` or ``"backbones"``, ``"recipe"``, ...)."""
    return current_registries()[kind]


def build(kind: str, cfg, **runtime):
    """Builds a component with the current registries:
    ``build("backbone", {"name": "resnet50", "pool": "gem"})``."""
    return current_registries().build(kind, cfg, **runtime)
