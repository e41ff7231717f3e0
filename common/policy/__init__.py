"""The federation policy: one TOML file, parsed once into frozen dataclasses.

A policy file has one table per section (``[federation]``, ``[model]``,
``[training]``, ``[privacy]``, ``[data]``, ``[valuation]``,
``[witness]``) with kebab-case keys. The same
values travel to Flower as a flat run config (``"training.batch-size" = 32``),
and :meth:`Policy.from_run_config` turns that back into the same dataclasses,
so the ServerApp and the ClientApp validate exactly what the operator wrote.

Everything in a policy reaches every participant. The operator's own
settings (ledger URL, key paths, the server's data) are not policy: they
live in the operator folder's ``deploy.toml`` (:mod:`server.deploy`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from common.policy.federation import FederationConfig
from common.policy.sections import (
    ACCOUNTANTS,
    ACTIVATIONS,
    DATASETS,
    DEVICES,
    GRAD_SAMPLE_MODES,
    LR_SCHEDULES,
    MODELS,
    DataConfig,
    ModelConfig,
    PrivacyConfig,
    TrainingConfig,
)
from common.policy.spec import PolicyError, Scalar, Section
from common.policy.valuation import VALUATION_METHODS, VALUATION_UTILITIES, ValuationConfig
from common.policy.witness import QUORUM_WORDS, WitnessConfig

__all__ = [
    "ACCOUNTANTS",
    "ACTIVATIONS",
    "DATASETS",
    "DEVICES",
    "GRAD_SAMPLE_MODES",
    "LR_SCHEDULES",
    "MODELS",
    "QUORUM_WORDS",
    "VALUATION_METHODS",
    "VALUATION_UTILITIES",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "Policy",
    "PolicyError",
    "PrivacyConfig",
    "Scalar",
    "TrainingConfig",
    "ValuationConfig",
    "WitnessConfig",
]

_SECTIONS: dict[str, type[Section]] = {
    cls.SECTION: cls
    for cls in (
        FederationConfig,
        ModelConfig,
        TrainingConfig,
        PrivacyConfig,
        DataConfig,
        ValuationConfig,
        WitnessConfig,
    )
}

_MOVED_SECTIONS = {
    "deploy": (
        "the [deploy] section is the operator's own and never travels to participants: it "
        "lives in the operator folder's deploy.toml (see 'fedcommons operator init'); "
        "remove it from the policy"
    ),
}
_RENAMED_KEYS = {("model", "checkpoint"): "base-model"}


@dataclass(frozen=True)
class Policy:
    """A whole federation policy; build it with :meth:`load` or :meth:`from_run_config`."""

    federation: FederationConfig = field(default_factory=FederationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    valuation: ValuationConfig = field(default_factory=ValuationConfig)
    witness: WitnessConfig = field(default_factory=WitnessConfig)

    def __post_init__(self) -> None:
        text = self.model.name == "bert"
        if text != (self.data.dataset == "stdlib-docs"):
            raise PolicyError(
                f"policy keys 'model.name' = {self.model.name!r} and 'data.dataset' = "
                f"{self.data.dataset!r} do not fit: the bert model trains on text "
                "(stdlib-docs), the cnn on images (digits)"
            )
        if text and len(self.data.label_names) != self.model.num_classes:
            raise PolicyError(
                f"policy key 'data.labels' names {len(self.data.label_names)} labels but "
                f"'model.num-classes' is {self.model.num_classes}"
            )

    @classmethod
    def from_sections(cls, tables: Mapping[str, Any]) -> Policy:
        """Build from ``{section: {key: value}}`` (a parsed TOML document)."""
        for name in tables:
            if name in _MOVED_SECTIONS:
                raise PolicyError(_MOVED_SECTIONS[name])
        unknown = sorted(set(tables) - set(_SECTIONS))
        if unknown:
            raise PolicyError(
                f"unknown policy section '[{unknown[0]}]'; "
                f"sections allowed: {', '.join(f'[{s}]' for s in _SECTIONS)}"
            )
        kwargs: dict[str, Any] = {}
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                raise PolicyError(
                    f"policy entry '{name}' must be a table ([{name}]), got {table!r}"
                )
            for key in table:
                if (name, key) in _RENAMED_KEYS:
                    raise PolicyError(
                        f"policy key '{name}.{key}' is now '{name}.{_RENAMED_KEYS[name, key]}'"
                    )
            kwargs[name] = _SECTIONS[name].from_mapping(table)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a TOML policy file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except IsADirectoryError:
            raise PolicyError(f"policy file {path} is a folder, not a TOML file") from None
        except OSError as err:
            raise PolicyError(f"cannot read policy file {path}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise PolicyError(f"policy file {path} is not UTF-8 text") from err
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(f"policy file {path} is not valid TOML: {err}") from err
        try:
            return cls.from_sections(document)
        except PolicyError as err:
            raise PolicyError(f"{path}: {err}") from err

    @classmethod
    def from_recorded(cls, text: str) -> Policy:
        """The policy a ledger recorded for a run, also as older versions wrote it.

        Runs recorded before the deploy settings left the policy carry a
        ``[deploy]`` section (dropped here) and ``model.checkpoint`` (now
        ``model.base-model``).
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise PolicyError(f"the recorded policy is not valid TOML: {err}") from err
        document.pop("deploy", None)
        for (section, old), new in _RENAMED_KEYS.items():
            table = document.get(section)
            if isinstance(table, dict) and old in table:
                table[new] = table.pop(old)
        return cls.from_sections(document)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Policy:
        """Rebuild the policy from Flower's flat ``section.key`` run config."""
        tables: dict[str, dict[str, Any]] = {}
        for flat_key, value in run_config.items():
            section, sep, key = flat_key.partition(".")
            if not sep:
                raise PolicyError(f"run config key '{flat_key}' is not of the form 'section.key'")
            tables.setdefault(section, {})[key] = value
        return cls.from_sections(tables)

    def with_overrides(self, values: Mapping[str, Scalar | None], *, source: str = "") -> Policy:
        """A copy with some ``"section.key"`` values replaced (``None`` leaves a key as it is).

        Every value is validated as in a policy file; an error names the key
        and, with ``source``, where the value came from (e.g. "the command line").
        """
        tables = self.to_sections()
        for flat_key, value in values.items():
            if value is None:
                continue
            section, sep, key = flat_key.partition(".")
            if not sep or section not in tables:
                raise PolicyError(f"'{flat_key}' is not a policy key of the form 'section.key'")
            tables[section][key] = value
        try:
            return Policy.from_sections(tables)
        except PolicyError as err:
            if not source:
                raise
            raise PolicyError(f"{err} (from {source})") from None

    def to_run_config(self) -> dict[str, Scalar]:
        """Flatten to Flower's run config (``{"section.key": value}``)."""
        return {
            f"{section}.{key}": value
            for section, table in self.to_sections().items()
            for key, value in table.items()
        }

    def to_sections(self) -> dict[str, dict[str, Scalar]]:
        return {name: getattr(self, name).to_mapping() for name in _SECTIONS}

    def to_toml(self) -> str:
        """Render as a TOML document that :meth:`load` reads back unchanged."""
        lines: list[str] = []
        for name, table in self.to_sections().items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
            lines.append("")
        return "\n".join(lines)

    def sha256(self) -> str:
        """Hash of the whole policy (canonical JSON of its sections)."""
        canonical = json.dumps(self.to_sections(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
