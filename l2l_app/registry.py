"""Name -> spec tables for the pluggable parts: algorithms, backbones, datasets.

A leaf module (no torch, nothing of the package but the error types): each plug-in module
registers itself at import (`ALGORITHMS.register(spec)`), and the packages `algorithms`,
`backbones` and `data` import every module they hold, so adding one is adding a file.
Config validation, the CLI, the experiment builder, bench and report read these tables and
name no algorithm, backbone or dataset themselves.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import ConfigError

Spec = TypeVar("Spec")


class Registry(Generic[Spec]):
    """An ordered name -> spec table; unknown names list the valid ones and the closest."""

    def __init__(self, kind: str, option: str) -> None:
        #: what the entries are ("algorithm") and the flag that chooses one ("--algo")
        self.kind = kind
        self.option = option
        self._specs: Dict[str, Spec] = {}

    def register(self, name: str, spec: Spec) -> Spec:
        """Add `spec` under `name`; a second registration of a name is a programming error."""
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._specs[name] = spec
        return spec

    def __getitem__(self, name: str) -> Spec:
        try:
            return self._specs[name]
        except KeyError:
            raise self.unknown(name) from None

    def get(self, name: str) -> Optional[Spec]:
        return self._specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> List[str]:
        return list(self._specs)

    def items(self):
        return self._specs.items()

    def unknown(self, name: str) -> ConfigError:
        """`--algo 'mamll' is not one of maml, protonet, reptile; did you mean 'maml'?`"""
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ConfigError(f"{self.option} {name!r} is not one of {', '.join(self.names())}{hint}")


def import_submodules(package: str) -> None:
    """Import every module of `package` (each registers itself); private modules (_x) are skipped."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


#: every meta-learning algorithm: name -> `learner.AlgorithmSpec`
ALGORITHMS: Registry = Registry("algorithm", "--algo")
#: every backbone: name -> `backbones.spec.BackboneSpec`
BACKBONES: Registry = Registry("backbone", "--backbone")
#: every dataset: name -> `data.types.Dataset`
DATASETS: Registry = Registry("dataset", "--dataset")
