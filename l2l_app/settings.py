"""How one setting is declared: its accepted range (`Limit`) and its documentation (`setting`).

A leaf module.  The experiment config (`config.py`) and every algorithm's own settings dataclass
(`algorithms/<name>.py`) declare their fields with `setting(...)`, so the range, the help text and
the on/off flags of a field live next to it, and the CLI, validation and error messages read them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class Limit:
    """The accepted range of a numeric setting: low..high, low excluded when `open_low`.

    `why` explains the upper bound; the message of a value above it says it.
    """

    low: float
    high: float
    integer: bool = True
    open_low: bool = False
    why: str = ""

    def error(self, value: Any, option: str) -> Optional[str]:
        """Why `value` of `option` is outside this range (None when it is None or inside)."""
        if value is None:
            return None
        above = f" ({self.why})" if self.why else ""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{option} must be a whole number, got {shown(value)}"
            if value < self.low:
                return f"{option} must be >= {number(self.low)}, got {shown(value)}"
            if value > self.high:
                return f"{option} must be <= {number(self.high)}{above}, got {shown(value)}"
            return None
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if is_number and (value > self.low if self.open_low else value >= self.low) and value <= self.high:
            return None
        kind = ("a positive number" if self.open_low else "a non-negative number") if self.low == 0 else \
            f"a number {'>' if self.open_low else '>='} {number(self.low)}"
        why = above if is_number and value > self.high else ""
        return f"{option} must be {kind} up to {number(self.high)}{why}, got {shown(value)}"


def shown(value: Any) -> str:
    """repr(value), with a huge integer cut short."""
    text = repr(value)
    if isinstance(value, int) and len(text) > 24:
        return f"{text[:8]}... (a {len(text.lstrip('-'))}-digit number)"
    return text


def number(x: float) -> str:
    """1000.0 -> '1000', 3.4e38 -> '3.40282e+38', ints as they are."""
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:g}"


#: float32's largest value: rates and norms above it are inf once they multiply float32 weights
FLOAT32_MAX = 3.4028234663852886e38
#: a positive rate (learning rates, epsilon): finite; huge values diverge, which the NaN guard reports
RATE = Limit(0.0, FLOAT32_MAX, integer=False, open_low=True, why="the largest float32")
#: inner-loop steps: each is a forward and backward pass per task, and second-order MAML keeps them all
INNER_STEPS = Limit(0, 10_000, why="the papers use 1 to 50 steps; each costs a forward and backward pass")


def setting(default: Any, help: str, *, limit: Optional[Limit] = None,
            choices: Optional[Tuple[str, ...]] = None, flags: Optional[Tuple[str, str]] = None,
            shown_default: Optional[str] = None) -> Any:
    """A dataclass field with its documentation.

    help: one line for --help; limit: the accepted range (numbers); choices: the accepted
    values (text); flags: (on, off) flags of a boolean, default --name / --no-name;
    shown_default: what --help says when the default is None (derived or off).
    """
    meta: Dict[str, Any] = {"help": help, "limit": limit, "choices": choices, "flags": flags,
                            "shown_default": shown_default}
    return dataclasses.field(default=default, metadata=meta)


def meta(cls: type, name: str) -> Dict[str, Any]:
    """The `setting` metadata of field `name` of dataclass `cls` ({} for a plain field)."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)
