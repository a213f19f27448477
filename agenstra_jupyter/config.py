"""Configuration helpers: every configurable trait may name an `AGENSTRA_*` variable.

A trait tagged ``.tag(config=True, env="AGENSTRA_PORT")`` takes its value from that
environment variable unless a config file or the command line sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from traitlets.config import Config, Configurable


def env_config(
    classes: Iterable[type[Configurable]], environ: Mapping[str, str] = os.environ
) -> Config:
    config = Config()
    for cls in classes:
        for name, trait in cls.class_traits(config=True).items():
            variable = trait.metadata.get("env")
            if variable and variable in environ:
                config[cls.__name__][name] = trait.from_string(environ[variable])
    return config


def env_variables(classes: Iterable[type[Configurable]]) -> dict[str, str]:
    """Map each documented environment variable to the `Class.trait` it sets."""
    found: dict[str, str] = {}
    for cls in classes:
        for name, trait in cls.class_own_traits(config=True).items():
            if variable := trait.metadata.get("env"):
                found[variable] = f"{cls.__name__}.{name}"
    return found


def apply_env(configurable: Configurable, environ: Mapping[str, str] = os.environ) -> None:
    """Set traits from their `AGENSTRA_*` variables unless config already set them."""
    section = configurable.config.get(type(configurable).__name__, {})
    for name, trait in configurable.traits(config=True).items():
        variable = trait.metadata.get("env")
        if variable and variable in environ and name not in section:
            setattr(configurable, name, trait.from_string(environ[variable]))
