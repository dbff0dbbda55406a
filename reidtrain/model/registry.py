"""The model registry: every model the toolkit trains is registered here by name, with its defaults and options.

    @register_model("my-net", defaults=ModelDefaults(inputs={"body": InputSpec("whole", (256, 128))}),
                    options=MyNetOptions, paper=PaperRow("Me et al. 2026", params_m=1.2), summary="...")
    def build_my_net(num_classes: int, inputs: dict[str, InputSpec], losses: LossSettings,
                     options: MyNetOptions) -> ReidModel: ...

    list_models()                       the registered names (built-in models and plug-ins)
    get_model(name) -> ModelEntry       its builder, defaults, options class and paper row
    build_model(name, num_classes, body_size=None, part_size=None, *, sizes=None, options=None, losses=None)

Where models come from: every module of the `reidtrain.model` package is imported on first lookup (so a new
model is one module there), and `REIDTRAIN_MODELS` names further plug-ins, separated by the path separator:
a `.py` file or an importable module name each. `options` is a dataclass of the model's own settings (the
recipe's `[model.NAME]` table, `--model-option KEY=VALUE` on the CLI), filled and type-checked by
reidkit.typedconfig; `None` for a model without options.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from reidkit.errors import ReidError

from .contract import InputSpec, LossSettings, ModelDefaults, ReidModel

PLUGINS_ENV = "REIDTRAIN_MODELS"


class UnknownModelError(ReidError, ValueError):
    """A model name that no registered model has."""


class ModelRegistrationError(ReidError, ValueError):
    """A model registered twice, or a plug-in that cannot be imported."""


@dataclass(frozen=True)
class PaperRow:
    """What the model's own paper reports, shown by `model-info` beside our count (None: not given).

    reported: accuracy the paper reports, dataset name (posecrop.datasets.DATASET_NAMES) -> metric ("R1", "R5",
    "R10", "mAP", in percent) -> value; shown by `cli.py compare` beside the measured figures."""

    source: str
    params_m: float | None = None
    macs_g: float | None = None
    note: str = ""
    reported: dict[str, dict[str, float]] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., ReidModel]
    defaults: ModelDefaults
    options: type | None = None
    paper: PaperRow | None = None
    summary: str = ""
    module: str = ""

    def parse_options(self, values: Mapping[str, Any] | None) -> Any:
        """The options dataclass filled from `values` (unknown keys / wrong types: ConfigError naming them)."""
        from reidkit.typedconfig import ConfigError, from_mapping

        values = dict(values or {})
        if self.options is None:
            if values:
                raise ConfigError(f"model {self.name!r} takes no options, got {sorted(values)}")
            return None
        return from_mapping(self.options, values, prefix=f"model.{self.name}.")

    def option_names(self) -> tuple[str, ...]:
        from dataclasses import fields
        return tuple(f.name for f in fields(self.options)) if self.options is not None else ()


_REGISTRY: dict[str, ModelEntry] = {}
_discovered = False


def register_model(name: str, *, defaults: ModelDefaults, options: type | None = None,
                   paper: PaperRow | None = None, summary: str = "") -> Callable:
    """Decorator registering `build(num_classes, inputs, losses, options) -> ReidModel` under `name`."""

    def deco(build: Callable[..., ReidModel]) -> Callable[..., ReidModel]:
        old = _REGISTRY.get(name)
        if old is not None and (old.module, old.build.__qualname__) != (build.__module__, build.__qualname__):
            raise ModelRegistrationError(f"model {name!r} is registered twice ({old.module} and {build.__module__})")
        _REGISTRY[name] = ModelEntry(name, build, defaults, options, paper, summary or (build.__doc__ or "").strip()
                                     .split("\n")[0], build.__module__)
        return build

    return deco


def _import_plugin(item: str) -> None:
    try:
        if item.endswith(".py"):
            path = Path(item).expanduser().resolve()
            mod_name = f"reidtrain_plugin_{path.stem}"
            if mod_name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
        else:
            importlib.import_module(item)
    except ModelRegistrationError:
        raise
    except Exception as exc:
        raise ModelRegistrationError(f"{PLUGINS_ENV}: cannot import model plug-in {item!r}: "
                                     f"{type(exc).__name__}: {exc}") from exc


def discover() -> None:
    """Import every module of this package (the built-in models register themselves) and the plug-ins of
    $REIDTRAIN_MODELS. Idempotent; plug-ins named later in the environment are picked up on the next call."""
    global _discovered
    if not _discovered:
        package = __name__.rpartition(".")[0]
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")
        _discovered = True
    for item in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        _import_plugin(item.strip())


def list_models() -> list[str]:
    discover()
    return list(_REGISTRY)


def get_model(name: str) -> ModelEntry:
    discover()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {tuple(_REGISTRY)} (more models: "
                                f"${PLUGINS_ENV}, see reidtrain.model.registry)")
    return _REGISTRY[name]


def resolve_inputs(defaults: Mapping[str, InputSpec], body_size: tuple[int, int] | None = None,
                   part_size: tuple[int, int] | None = None,
                   sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, InputSpec]:
    """The model's inputs with their sizes overridden: `body_size` / `part_size` set every input of that size
    group, `sizes` single inputs by key (unknown keys: ValueError)."""
    sizes = dict(sizes or {})
    unknown = [k for k in sizes if k not in defaults]
    if unknown:
        raise ValueError(f"input sizes given for {unknown}, the model's inputs are {tuple(defaults)}")
    out = {}
    for key, spec in defaults.items():
        size = sizes.get(key) or (body_size if spec.group == "body" else part_size) or spec.size
        out[key] = replace(spec, size=(int(size[0]), int(size[1])))
    return out


def model_inputs(name: str, body_size: tuple[int, int] | None = None,
                 part_size: tuple[int, int] | None = None) -> dict[str, InputSpec]:
    """The inputs of registered model `name` at the given size-group sizes (defaults where None)."""
    return resolve_inputs(get_model(name).defaults.inputs, body_size, part_size)


def build_model(name: str, num_classes: int, body_size: tuple[int, int] | None = None,
                part_size: tuple[int, int] | None = None, *, sizes: Mapping[str, tuple[int, int]] | None = None,
                options: Mapping[str, Any] | Any | None = None, losses: LossSettings | None = None,
                **option_values: Any) -> ReidModel:
    """Build registered model `name` with `num_classes` identities (0: no classifiers).

    `body_size` / `part_size` / `sizes` override the default input sizes (resolve_inputs); `options` is a mapping
    (or the options dataclass itself) of the model's options, `option_values` further options by keyword;
    `losses` the loss settings (default: the model's)."""
    entry = get_model(name)
    if options is not None and not isinstance(options, Mapping):
        if option_values:
            options = replace(options, **option_values)
        opts = options
    else:
        opts = entry.parse_options({**dict(options or {}), **option_values})
    inputs = resolve_inputs(entry.defaults.inputs, body_size, part_size, sizes)
    model = entry.build(num_classes, inputs, losses or entry.defaults.losses, opts)
    if not isinstance(model, ReidModel):
        raise ModelRegistrationError(f"model {name!r}: its builder returned {type(model).__name__}, not a ReidModel")
    return model
