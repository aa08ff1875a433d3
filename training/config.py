"""Typed, strict training configuration and the presets (data in ``presets.json``)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

InitName = Literal["shared", "framework"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
ScheduleName = Literal["constant", "onecycle"]


class ConfigError(ValueError):
    """A configuration or preset is unknown, incomplete or has unknown keys."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the MLP: 784 inputs, ``hidden_sizes`` ReLU layers, 10 logits.

    ``init``: ``shared`` draws He-uniform weights in numpy from the seed, so both
    frameworks start from the same weights; ``framework`` keeps each framework's own
    default initialisation.
    """

    hidden_sizes: tuple[int, ...]
    batch_norm: bool = False
    dropout: float = 0.0
    init: InitName = "shared"


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule; unused fields are ignored by that optimizer."""

    name: OptimizerName
    learning_rate: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    rho: float = 0.9
    weight_decay: float = 0.0
    schedule: ScheduleName = "constant"


@dataclass(frozen=True)
class AugmentConfig:
    """Per image: a random shift of up to ``max_shift`` pixels, a horizontal flip, and a random turn.

    ``max_rotate`` and ``max_shear`` (degrees) draw a rotation and a horizontal shear uniformly within
    +-the bound, about the image centre, for a share ``affine_share`` of the images; zero leaves the turn out
    (and the batches exactly as they were without these fields). The last ``plain_epochs`` epochs leave the turn
    out too, so the weights settle on unturned images (what that buys back is measured in docs/inputs.md,
    "Tilt").
    """

    max_shift: int = 0
    flip: bool = False
    max_rotate: float = 0.0
    max_shear: float = 0.0
    affine_share: float = 1.0
    plain_epochs: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run, so a run can be rebuilt from its config."""

    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: int
    epochs: int
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    seed: int = 0
    limit: int | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :func:`config_from_dict` reads it back."""
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown and missing keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}.{name}")
        elif name == "hidden_sizes":
            if not value or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(f"{where}.hidden_sizes: expected positive integers, got {value}")
            value = tuple(value)
        elif typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            raise ConfigError(f"{where}.{name}: {value!r} is not one of {typing.get_args(hint)}")
        values[name] = value
    missing = [
        n for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return cls(**values)


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Strictly parse a config mapping (as in ``presets.json`` or a run's ``config.json``)."""
    return _build(TrainConfig, data, where)


def load_presets(path: Path | None = None) -> dict[str, TrainConfig]:
    """All presets, parsed strictly; ``path`` defaults to the bundled ``presets.json``."""
    source = resources.files("training").joinpath("presets.json") if path is None else Path(path)
    text = source.read_text()
    return {name: config_from_dict(body, f"preset {name!r}") for name, body in json.loads(text).items()}


def get_preset(name_or_path: str, **overrides: Any) -> TrainConfig:
    """A preset by name, or a preset file (JSON of one config), with overrides applied.

    Args:
        name_or_path: preset name (``best``, ``seed-adam``...) or a ``.json`` file path.
        overrides: top-level fields to replace (``None`` values are ignored).

    Raises:
        ConfigError: unknown preset or override.
    """
    if name_or_path.endswith(".json"):
        config = config_from_dict(json.loads(Path(name_or_path).read_text()), name_or_path)
    else:
        presets = load_presets()
        if name_or_path not in presets:
            raise ConfigError(f"unknown preset {name_or_path!r}; choose from {sorted(presets)}")
        config = presets[name_or_path]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return dataclasses.replace(config, **overrides)
    except TypeError as exc:
        raise ConfigError(f"bad override: {exc}") from exc
