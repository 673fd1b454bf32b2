"""`l2l-app bench`: the timing harness (`harness`) and the baseline it times against that is not
part of the library (`torchmeta_style`, a Torchmeta-style MAML)."""
from .harness import (IMPLS, Bench, BenchSettings, build_impl, experiment_config, parse_impls, parse_sweep,
                      percentile, relative_l2, run_bench, speedup, summarise, synthetic_split, time_calls)

__all__ = ["IMPLS", "Bench", "BenchSettings", "build_impl", "experiment_config", "parse_impls", "parse_sweep",
           "percentile", "relative_l2", "run_bench", "speedup", "summarise", "synthetic_split", "time_calls"]
