"""``build_manifest(dataset, root, **options)``: one entry point over every adapter."""

from __future__ import annotations

import importlib

ADAPTERS = {
    "synthetic": ("grounding.data.adapters.synthetic", "synthetic_manifest"),
    "rsna": ("grounding.data.adapters.rsna", "rsna_manifest"),
    "chestxray8": ("grounding.data.adapters.chestxray8", "chestxray8_manifest"),
    "mimic": ("grounding.data.adapters.mimic", "mimic_manifest"),
    "covid": ("grounding.data.adapters.covid", "covid_manifest"),
}


def build_manifest(dataset: str, root: str, **options):
    """(manifest table, counts) for ``dataset`` read from ``root``."""
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset '{dataset}': choose one of {', '.join(ADAPTERS)}")
    module, name = ADAPTERS[dataset]
    result = getattr(importlib.import_module(module), name)(root, **options)
    if isinstance(result, tuple):
        return result
    return result, {"rows": result.num_rows}
