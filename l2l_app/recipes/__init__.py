"""Named presets with published hyperparameters: one `<algorithm>.recipes.json` file per algorithm.

Each file holds the algorithm's name and a list of recipes, each with: name, source (paper),
table, reported accuracy (and 95% CI where the paper gives one), the evaluation protocol, and
`settings` (flat config names).  A recipe gives a published number only with its source and
table; where the source could not be read, the number is left out rather than guessed.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent
SUFFIX = ".recipes.json"


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    table: str
    reported_accuracy: float
    reported_ci95: Optional[float]
    protocol: str
    settings: Dict[str, Any]


@lru_cache(maxsize=1)
def _all_recipes() -> Dict[str, Recipe]:
    """name -> Recipe over every *.recipes.json file (a name defined twice is an error)."""
    out: Dict[str, Recipe] = {}
    for path in sorted(RECIPE_DIR.glob(f"*{SUFFIX}")):
        content = json.loads(path.read_text())
        for raw in content["recipes"]:
            if raw["name"] in out:
                raise ValueError(f"recipe {raw['name']!r} is defined twice (again in {path.name})")
            if raw["settings"].get("algo") != content["algorithm"]:
                raise ValueError(f"recipe {raw['name']!r} in {path.name} is for {raw['settings'].get('algo')!r}")
            out[raw["name"]] = Recipe(raw["name"], raw["source"], raw["table"], raw["reported"]["accuracy"],
                                      raw["reported"].get("ci95"), raw["protocol"], raw["settings"])
    return out


def recipe_names() -> List[str]:
    return sorted(_all_recipes())


def load_recipe(name: str) -> Recipe:
    """Load a recipe by name; an unknown name lists the valid ones and the closest match."""
    recipes = _all_recipes()
    if name not in recipes:
        names = recipe_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown recipe {name!r}; {hint}run `l2l-app recipes` to list them "
                          f"({', '.join(names)})")
    return recipes[name]


def find_published(settings: Dict[str, Any]) -> Optional[Recipe]:
    """The recipe whose algorithm, dataset, ways and shots (and first_order) match `settings`."""
    keys = ("algo", "dataset", "ways", "shots")
    for recipe in _all_recipes().values():
        s = recipe.settings
        if all(s.get(k) == settings.get(k) for k in keys) and \
                bool(s.get("first_order", False)) == bool(settings.get("first_order", False)):
            return recipe
    return None
