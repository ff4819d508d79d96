"""Training stages as data: one module per method, one registry, one protocol.

A stage is a subclass of :class:`Stage` with ``@register``. It declares everything the
rest of rounds needs to know about it, and nothing outside its module branches on its
name:

- ``data_kind``: the kind of data file it trains on (``engine.data`` validates it; a stage
  may register a kind of its own with ``engine.data.register_kind``);
- ``default_lr``: the learning rate per method (``engine.methods``: full / lora / qlora);
- ``options``: its own settings (``--beta`` ...), stored in ``TrainSpec.options``;
- ``factors``: what a step does, for the planner (sequences per example, reference passes —
  none means no reference model, so nothing to precompute — extra no-grad forwards, adapter
  dropout);
- ``min_micro_batch``: the smallest micro-batch it can train with (OOM halving stops there);
- ``charts`` and ``series``: the Monitor's chart sets of its own metrics, and their labels;
- ``dataset_rows`` / ``trainer_config`` / ``make_trainer``: the TRL dataset, config and
  trainer (TRL keeps one config class and one trainer per method; so do we).

Stage modules import nothing heavy at module level: the console reads the registry (the
``rounds train`` choices and options) without loading torch. A stage registered outside
``engine.stages`` (a plugin, a test) is recorded in session.json by module and file, so the
worker process, which starts from the session folder alone, can import it again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from engine.errors import UserError


@dataclass(frozen=True)
class Option:
    """A stage's own setting: ``--flag`` on ``rounds train``, ``spec.options[name]`` in the run."""

    name: str
    type: type
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class PlanFactors:
    """What one step of the stage does, in the planner's terms (``engine.plan``)."""

    sequences: int = 1  # sequences per example run forward and backward (DPO: chosen and rejected)
    # no-grad forwards through the frozen reference, in units of the trained tokens (DPO 1: chosen and
    # rejected; KTO 2: the completion and its mismatched KL completion); 0: no reference model
    reference_passes: float = 0.0
    extra_forwards: float = 0.0  # no-grad forwards through the policy, same units (KTO's KL completions)
    adapter_dropout: bool = False  # dropout stays on, LoRA's and the model's own (TRL's preference trainers: off)

    @property
    def reference(self) -> bool:
        return self.reference_passes > 0


# an option two preference stages share (one flag, one help)
BETA = Option("beta", float, 0.1, "DPO/KTO beta: how far the policy may move from the reference (default 0.1)")


class Stage:
    """The protocol every stage module implements (class attributes plus three methods)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    trainer_name: ClassVar[str] = ""  # TRL's class, for help texts
    data_kind: ClassVar[str] = ""
    unit: ClassVar[str] = "examples"  # what an example is called ("pairs" for DPO)
    default_lr: ClassVar[dict[str, float]] = {}
    options: ClassVar[tuple[Option, ...]] = ()
    factors: ClassVar[PlanFactors] = PlanFactors()
    min_micro_batch: ClassVar[int] = 1
    charts: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()
    series: ClassVar[dict[str, str]] = {}
    echo: ClassVar[tuple[tuple[str, str, str], ...]] = ()  # (metric, label, format) on the run's progress line

    def option(self, spec, name: str) -> Any:
        """The value of one of this stage's options for a run (its default when not given)."""
        for o in self.options:
            if o.name == name:
                value = (spec.options or {}).get(name, o.default)
                return o.type(value) if value is not None else None
        raise KeyError(f"stage {self.name} has no option {name!r}")

    def dataset_rows(self, spec, rows: list[dict]) -> list[dict]:
        """Validated data rows (``engine.data``, canonical fields) as TRL dataset rows, in the order
        the trainer should see them (its sampler may shuffle again)."""
        raise NotImplementedError

    def trainer_config(self, spec, common: dict):
        """TRL's config for this method from the settings every stage shares (``common``)."""
        raise NotImplementedError

    def make_trainer(self, spec, kwargs: dict, ref_model):
        """TRL's trainer; ``ref_model`` is a separate frozen reference (full plans only) or None."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What a session records about its stage, so that readers (the Monitor) need no import."""
        return {"name": self.name, "unit": self.unit, "data_kind": self.data_kind,
                "charts": [[title, list(keys)] for title, keys in self.charts], "series": dict(self.series),
                **_origin(type(self))}


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    if not cls.name or not cls.data_kind:
        raise ValueError(f"{cls.__name__}: a stage needs a name and a data_kind")
    from engine.methods import METHODS

    missing = [m for m in METHODS if m not in cls.default_lr]
    if missing:
        raise ValueError(f"{cls.__name__}: no default learning rate for {', '.join(missing)}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """For tests that register a stage of their own."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, origin: dict | None = None) -> Stage:
    """The stage called ``name``; ``origin`` (from session.json) imports a stage registered outside
    ``engine.stages`` first, so a worker started from the session folder finds it."""
    if name not in _REGISTRY and origin:
        _import_origin(origin)
    if name not in _REGISTRY:
        raise UserError(f"unknown stage {name!r}", field="stage",
                        hint="use one of: " + ", ".join(f"`rounds train {n}`" for n in _REGISTRY))
    return _REGISTRY[name]()


def all_options() -> dict[str, tuple[Option, list[str]]]:
    """Every stage option by name, with the stages that take it (for the command line)."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for n, cls in _REGISTRY.items():
        for o in cls.options:
            out.setdefault(o.name, (o, []))[1].append(n)
    return out


def _origin(cls: type) -> dict:
    module = cls.__module__
    if module.startswith("engine.stages."):
        return {}
    file = getattr(sys.modules.get(module), "__file__", None)
    return {"module": module, **({"file": str(Path(file).resolve())} if file else {})}


def _import_origin(origin: dict) -> None:
    module, file = origin.get("module"), origin.get("file")
    if not module:
        return
    try:
        importlib.import_module(module)
        return
    except ImportError:
        if not file:
            raise UserError(f"the stage's module {module!r} cannot be imported", field="stage",
                            hint="install it, or put it on PYTHONPATH") from None
    spec = importlib.util.spec_from_file_location(module, file)
    if spec is None or spec.loader is None or not Path(file).is_file():
        raise UserError(f"the stage's module {module!r} is not at {file}", field="stage",
                        hint="restore the file, or put its module on PYTHONPATH")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    folder = str(Path(file).parent)
    if folder not in sys.path:  # as for a script: the module's own folder, for its sibling imports
        sys.path.append(folder)
    spec.loader.exec_module(mod)


# the built-in stages: one line each
from engine.stages import sft  # noqa: E402,F401,I001
from engine.stages import dpo  # noqa: E402,F401
from engine.stages import kto  # noqa: E402,F401
