"""Named presets with published hyperparameters, one JSON file per setting.

Each file holds: name, source (paper), table, reported accuracy (and 95% CI where the
paper gives one), the evaluation protocol, and `settings` (flat config names).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    table: str
    reported_accuracy: float
    reported_ci95: Optional[float]
    protocol: str
    settings: Dict[str, Any]


def recipe_names() -> List[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name: str) -> Recipe:
    """Load a recipe by name; an unknown name lists the valid ones and the closest match."""
    path = RECIPE_DIR / f"{name}.json"
    if not path.is_file():
        names = recipe_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown recipe {name!r}; {hint}run `l2l-app recipes` to list them "
                          f"({', '.join(names)})")
    raw = json.loads(path.read_text())
    return Recipe(raw["name"], raw["source"], raw["table"], raw["reported"]["accuracy"],
                  raw["reported"].get("ci95"), raw["protocol"], raw["settings"])


def find_published(settings: Dict[str, Any]) -> Optional[Recipe]:
    """The recipe whose algorithm, dataset, ways and shots (and first_order) match `settings`."""
    keys = ("algo", "dataset", "ways", "shots")
    for name in recipe_names():
        recipe = load_recipe(name)
        s = recipe.settings
        if all(s.get(k) == settings.get(k) for k in keys) and \
                bool(s.get("first_order", False)) == bool(settings.get("first_order", False)):
            return recipe
    return None
