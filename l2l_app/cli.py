"""`l2l-app`: the command line.  Parse, build a config, call one library function, print.

Every library error and every refused option (a value out of range, a choice that does not
exist, a setting the chosen algorithm does not use) becomes a one-line `error: ...` message on
stderr and exit code 2 (bad input), before anything is built or written.  A run stopped by a
NaN (or, under torchrun, by a rank that died) exits 1; one stopped by SIGINT/SIGTERM exits
128 + signal number after writing a checkpoint.
`l2l-app` alone prints the help.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from .config import (ALGO_ALIASES, APPLIES_TO, BOOL_FLAGS, DEFAULTS, ENGINES, FIELD_TYPES, MODEL_OPTIONS, SAMPLERS,
                     SPLITS, algorithm_setting, flag, is_algorithm_setting, limit_error, not_one_of)
from .backbones import CONV_IMPLS
from .data.types import DATA_OPTIONS, RESIZE_POLICIES
from .errors import ConfigError, L2LAppError
from .bench.harness import IMPLS
from .experiment import PLAIN_TUNING
from .export import FORMATS as EXPORT_FORMATS
from .registry import ALGORITHMS, BACKBONES, DATASETS
from .settings import Limit


#: help of the GPU speed settings that `train` and `bench` share
CUDNN_BENCHMARK_HELP = ("GPU: let cuDNN time its algorithms for each convolution shape and keep the fastest (the "
                        "first steps are slower)")
CONV_IMPL_HELP = ("native: cuDNN convolutions; channels-last: on NHWC tensors (not under vmap); unfold: im2col + "
                  "one matrix product (a batched GEMM across tasks); the same numbers to rounding")


class Choices(click.Choice):
    """click.Choice whose refusal is the usual one line: `--split 'tset' is not one of ...; did you mean 'test'?`."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value in self.choices:
            return value
        option = param.opts[0] if param is not None and param.opts else "value"
        raise click.UsageError(not_one_of(option, value, self.choices), ctx)


class SectionedOption(click.Option):
    """An option with a --help section and a documented default that it does not set itself.

    Train options default to None so that only the flags the user gives override the recipe or
    config file; `shown_default` says in --help what applies when the flag is left out.
    """

    def __init__(self, *args: Any, section: str = "Options", shown_default: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section
        self.shown_default = shown_default

    def get_help_record(self, ctx: click.Context) -> Optional[Tuple[str, str]]:
        record = super().get_help_record(ctx)
        if record is None or self.shown_default is None:
            return record
        spec, text = record
        return spec, f"{text}  [default: {self.shown_default}]".strip()


class SectionedCommand(click.Command):
    """A command whose --help lists its options under their sections, in declaration order."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: Dict[str, List[Tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                sections.setdefault(getattr(param, "section", "Other options"), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def tuned_default(name: str) -> str:
    """--help's default of a setting `experiment.resolve_tuning` fills in: its plain value, and the
    algorithms whose measured fastest GPU step differs ('off; with --engine auto on a GPU: maml on')."""
    plain = PLAIN_TUNING[name]
    tuned = {algo: spec.gpu_tuning[name] for algo, spec in ALGORITHMS.items() if name in spec.gpu_tuning}
    shown = {algo: _shown_value(name, value) for algo, value in tuned.items() if value != plain}
    text = _shown_value(name, plain)
    if shown:
        text += "; with --engine auto, training on a GPU: " + _grouped(shown, name_owners=True)
    return text


#: what --help says for settings whose default is None (derived, or off)
DERIVED_DEFAULTS: Dict[str, str] = {
    "data_root": "the bundled Omniglot",
    "split_file": "none (class folders: train/val/test sub-folders, else a seeded split)",
    "train_ways": "--ways",
    "train_shots": "--shots",
    "train_queries": "--queries",
    "grad_clip": "no clipping",
    "lr_decay_every": "no decay",
    "chunk_size": "the whole meta-batch (or what --max-memory allows)",
    "max_memory": "no budget",
    "cuda_graph": "on with the batched engine on a GPU",
    "checkpoint_minutes": "off",
    "time_budget": "none",
}


def _shown_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag(name, value).lstrip("-")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grouped(shown: Dict[str, str], name_owners: bool = False) -> str:
    """{'maml': '0.4', 'anil': '0.4', 'reptile': '0.001'} -> 'maml, anil 0.4; reptile 0.001' (one value:
    itself, unless `name_owners`)."""
    by_text: Dict[str, List[str]] = {}
    for owner, text in shown.items():
        by_text.setdefault(text, []).append(owner)
    if len(by_text) == 1 and not name_owners:
        return next(iter(by_text))
    return "; ".join(f"{', '.join(owners)} {text}" for text, owners in by_text.items())


def _component_defaults(name: str) -> Dict[str, Any]:
    """A dataset or backbone option's default in each registered dataset or backbone that takes it."""
    if name in DATA_OPTIONS:
        attr = "in_channels" if name == "channels" else name
        return {n: getattr(d, attr) for n, d in DATASETS.items() if name in d.options}
    if name in MODEL_OPTIONS:
        return {n: b.defaults.get(name) for n, b in BACKBONES.items() if name in b.options}
    if any(name in spec.optimizer.defaults for _, spec in ALGORITHMS.items()):  # Reptile's epsilon
        return {algo: spec.optimizer.defaults.get(name, DEFAULTS[name]) for algo, spec in ALGORITHMS.items()}
    return {}


def shown_default(name: str) -> str:
    """The default of setting `name` as --help shows it: the ExperimentConfig default, or for an
    algorithm's setting its algorithms' defaults ('maml 0.4, reptile 0.001' when they differ), and
    for a dataset's or backbone's option theirs ('omniglot 28; folder, miniimagenet 84')."""
    if is_algorithm_setting(name):
        info = algorithm_setting(name)
        return _grouped({algo: info["meta"][algo]["shown_default"] if value is None else _shown_value(name, value)
                         for algo, value in info["defaults"].items()})
    components = {owner: v for owner, v in _component_defaults(name).items() if v is not None}
    if components:
        return _grouped({owner: _shown_value(name, v) for owner, v in components.items()})
    value = DEFAULTS[name]
    if value is None:
        return tuned_default(name) if name in PLAIN_TUNING else DERIVED_DEFAULTS[name]
    if isinstance(value, bool):
        return flag(name, value).lstrip("-")
    return str(value)


# (flat config name, click type or None for an on/off flag of BOOL_FLAGS, help), by --help section,
# in the README's groups.  Every option defaults to None: only the flags the user gave override.
Spec = Tuple[str, Any, str]


def _algorithm_spec(name: str) -> Spec:
    """The option of an algorithm's setting, from what its algorithms declare (`settings.setting`)."""
    info = algorithm_setting(name)
    choices = next((m["choices"] for m in info["meta"].values() if m["choices"]), None)
    kind = FIELD_TYPES[name]
    typ = None if kind is bool else Choices(choices) if choices else kind
    return name, typ, info["help"]


#: every registered algorithm's settings, in registration order (shared names once)
ALGORITHM_SPECS: List[Spec] = [_algorithm_spec(name) for name in APPLIES_TO if is_algorithm_setting(name)]
TRAIN_SECTIONS: List[Tuple[str, List[Spec]]] = [
    ("Data", [
        ("dataset", Choices(DATASETS.names()), "dataset"),
        ("data_root", str, "dataset folder (zips or extracted folders)"),
        ("sampler", Choices(SAMPLERS), "episode sampler: l2l (learn2learn TaskDataset) or tensor (on-device); "
                                       "auto: tensor for the batched engine"),
        ("skip_bad_images", None, "skip unreadable images (counted and reported)"),
        ("image_size", int, "side of the square images the data is decoded to"),
        ("channels", int, "1 (grey) or 3 (RGB): what images are converted to"),
        ("resize", Choices(RESIZE_POLICIES), "stretch: squash to the square; crop: shorter side to "
                                                 "--image-size, then the centre square"),
        ("normalize", None, "standardise inputs with the train split's per-channel mean and std "
                            "(saved in the run and reused by eval, predict and export)"),
        ("split_file", str, "class folders / features: a JSON {\"train\": [classes], \"val\": [...], "
                            "\"test\": [...]} or a text file with [train], [val], [test] sections, one class per line"),
        ("split_seed", int, "class folders / features without split folders or file: seed of the class-level split"),
        ("split_ratios", str, "fractions of the classes in train,val,test for a seeded split"),
        ("label_column", str, "features: the column (CSV) or array (.npz) that holds the class"),
    ]),
    ("Episodes", [
        ("ways", int, "classes per test/validation episode"),
        ("shots", int, "support images per class (test/validation)"),
        ("queries", int, "query images per class (test/validation)"),
        ("train_ways", int, "classes per training episode"),
        ("train_shots", int, "support images per class in training"),
        ("train_queries", int, "query images per class in training"),
    ]),
    ("Model", [
        ("backbone", Choices(BACKBONES.names()), "embedding network"),
        ("hidden", int, "filters per conv layer"),
        ("mlp_hidden", str, "mlp: hidden layer sizes, comma-separated"),
    ]),
    ("Algorithm settings", ALGORITHM_SPECS),
    ("Meta-optimiser", [
        ("meta_lr", float, "meta learning rate (Adam; Reptile's initial epsilon)"),
        ("meta_batch", int, "tasks per meta-step"),
        ("iterations", int, "meta-steps"),
        ("grad_clip", float, "clip the meta-gradient norm"),
        ("lr_decay_every", int, "multiply the meta lr by --lr-decay every N steps"),
        ("lr_decay", float, "meta lr decay factor"),
    ]),
    ("Run", [
        ("seed", int, "random seed"),
        ("device", str, "auto | cpu | cuda | cuda:N"),
        ("engine", Choices(ENGINES), "loop: learn2learn, one task at a time; batched: torch.func; "
                                     "auto: the faster one measured for the algorithm and device"),
        ("chunk_size", int, "batched engine: tasks per vmap chunk"),
        ("max_memory", float, "batched engine: memory budget in GiB that picks the chunk size"),
        ("compile", None, "batched engine: torch.compile the meta-loss"),
        ("cuda_graph", None, "batched engine on a GPU: capture each training step (or, where it cannot be, "
                             "its meta-gradient) as one CUDA graph and replay it"),
        ("tf32", None, "allow TF32 convolutions on GPUs (off: exact fp32)"),
        ("cudnn_benchmark", None, CUDNN_BENCHMARK_HELP),
        ("conv_impl", Choices(CONV_IMPLS), CONV_IMPL_HELP),
        ("val_every", int, "validate every N steps"),
        ("val_episodes", int, "validation episodes"),
        ("checkpoint_every", int, "write checkpoints/last.pt every N steps"),
        ("checkpoint_minutes", float, "also write it every M minutes"),
        ("time_budget", float, "stop after M minutes of training (a checkpoint is written)"),
        ("skip_nonfinite", None, "skip steps whose loss is NaN/inf instead of stopping"),
        ("log_every", int, "when output is not a terminal, print a plain progress line every N steps"),
        ("tensorboard", None, "also write the metrics as TensorBoard scalars in RUN_DIR/tensorboard "
                              "(needs the optional `tensorboard` package)"),
    ]),
]
#: --algo: the algorithms and their aliases (fomaml = maml --first-order)
ALGO_SPEC: Spec = ("algo", Choices(tuple(ALGORITHMS.names()) + tuple(ALGO_ALIASES)),
                   "algorithm: " + "; ".join(f"{name} = {spec.summary}" for name, spec in ALGORITHMS.items())
                   + "".join(f"; {alias} = {meaning}" for alias, (_, _, meaning) in ALGO_ALIASES.items()))
CONFIG_HELP = ("TOML or JSON file of settings: flat names as the flags use (inner_lr = 0.4) or the groups of a "
               "run's config.json, which starts a run that reproduces it.  Precedence: defaults < recipe < "
               "this file < flags.  A `recipe` in the file works like --recipe (if both are given they must "
               "name the same recipe)")

# Upper bounds of the bench-only counts: each timed call is a full meta-step.
BENCH_LIMITS = {"--warmup": Limit(0, 10_000, why="untimed calls; a few suffice"),
                "--repeats": Limit(1, 10_000, why="the median is stable after a few dozen")}


def _spec_option(spec: Spec, section: str) -> Callable:
    """The click option of one setting: --name TYPE or an on/off pair, default None."""
    name, typ, help_text = spec
    if name in APPLIES_TO:
        help_text = f"{help_text} ({', '.join(APPLIES_TO[name])} only)"
    decls = ["/".join(BOOL_FLAGS[name])] if typ is None else [flag(name)]
    kwargs = {} if typ is None else {"type": typ}
    return click.option(*decls, name, default=None, help=help_text, cls=SectionedOption, section=section,
                        shown_default=shown_default(name), **kwargs)


def algorithm_options(fn: Callable) -> Callable:
    """Every registered algorithm's settings as options of `fn` (default None: the algorithm's own)."""
    for spec in reversed(ALGORITHM_SPECS):
        fn = _spec_option(spec, "Algorithm settings")(fn)
    return fn


def train_options(fn: Callable) -> Callable:
    """Every setting of TRAIN_SECTIONS as an option of `fn` (a flat-name keyword argument)."""
    for section, specs in reversed(TRAIN_SECTIONS):
        for spec in reversed(specs):
            fn = _spec_option(spec, section)(fn)
    return fn


#: errno values of an OSError naming a file that the CLI reports as an output it cannot write
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                          errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.ENAMETOOLONG})


class OneLineErrors(click.Group):
    """A click group that prints every error as one line and exits 2 (never a traceback)."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if not args:  # `l2l-app` alone: the help, successfully
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C outside training, which handles its own
            _error("interrupted")
            sys.exit(130)
        except click.UsageError as exc:
            _error(exc.format_message(), every_rank_says_it=True)
            sys.exit(2)
        except ExitWith as exc:
            _error(str(exc), every_rank_says_it=True)
            sys.exit(exc.code)
        except ConfigError as exc:
            _error(str(exc), every_rank_says_it=True)
            sys.exit(2)
        except L2LAppError as exc:
            _error(str(exc))
            sys.exit(2)
        except OSError as exc:  # a safety net: an output that could not be written, not a traceback
            if exc.filename is None or exc.errno not in WRITE_ERRNOS:
                raise
            _error(f"cannot write {exc.filename}: {exc.strerror or exc}; choose another --out or fix its permissions")
            sys.exit(2)


def _error(message: str, every_rank_says_it: bool = False) -> None:
    """`error: MESSAGE` on stderr, always on one line.  Under torchrun an error every rank meets
    alike (a refused command line, a stop or a failure of the whole job) is printed by rank 0 alone;
    another rank's own error (its node's data, say) is printed with its rank."""
    rank = os.environ.get("RANK", "0")  # torchrun's; read here without importing torch
    if rank != "0" and every_rank_says_it:
        return
    prefix = f"[rank {rank}] " if rank != "0" else ""
    click.echo("error: " + prefix + " ".join(message.split()), err=True)


class ExitWith(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _check_numbers(checks: List[Optional[str]]) -> None:
    """Raise one UsageError with every problem found (None entries are fine values)."""
    problems = [p for p in checks if p]
    if problems:
        raise click.UsageError("; ".join(problems))


@click.group(cls=OneLineErrors)
@click.version_option(package_name="l2l_app")
def cli() -> None:
    """Few-shot image classification by meta-learning (`l2l-app train --help` lists the algorithms)."""


@cli.command(cls=SectionedCommand)
@click.option("--recipe", default=None, cls=SectionedOption, section="Experiment",
              help="start from a published preset (see `l2l-app recipes`); it fixes the algorithm")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              cls=SectionedOption, section="Experiment", help=CONFIG_HELP)
@_spec_option(ALGO_SPEC, "Experiment")
@train_options
@click.option("--out", type=click.Path(path_type=Path), default=None, cls=SectionedOption, section="Run directory",
              help="run directory to create")
@click.option("--resume", "resume", type=click.Path(path_type=Path), default=None, cls=SectionedOption,
              section="Run directory", help="continue the run in this directory from its last checkpoint")
@click.option("--overwrite", is_flag=True, cls=SectionedOption, section="Run directory",
              help="replace an existing run directory")
@click.option("--quiet", is_flag=True, cls=SectionedOption, section="Run directory", help="no progress output")
def train(recipe: Optional[str], config_file: Optional[Path], out: Optional[Path], resume: Optional[Path],
          overwrite: bool, quiet: bool, **settings: Any) -> None:
    """Meta-train a model into a run directory (config.json, metrics.jsonl, checkpoints/).

    Settings come from the defaults, then --recipe, then --config, then the flags.  A flag
    that the chosen algorithm or engine does not use is refused.
    """
    from .config import compose
    from .distributed import RankFailure, is_main_process, restarted_run
    from .trainer import Interrupted, NonFiniteLossError, Trainer, resume_config
    given = {k: v for k, v in settings.items() if v is not None}
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise click.UsageError("--resume RUN_DIR continues that directory; drop --out")
        if recipe or config_file:
            raise click.UsageError("--resume continues a run with its own config.json; drop "
                                   + ("--recipe" if recipe else "--config"))
        if overwrite:
            raise click.UsageError("--resume continues the run and --overwrite replaces it: to start it again, "
                                   "pass --out RUN_DIR --overwrite instead of --resume")
        config, run_dir = resume_config(resume, given), Path(resume)
    else:
        if out is None:
            raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
        config, run_dir = compose(given, recipe, config_file), Path(out)
    restart = restarted_run(run_dir) if resume is None else None  # torchrun --max-restarts: this job's own run
    trainer = Trainer(config, run_dir, resume=resume is not None or restart == "resume",
                      overwrite=overwrite or restart == "overwrite", progress=not quiet)
    try:
        summary = trainer.fit()
    except (NonFiniteLossError, RankFailure) as exc:
        raise ExitWith(str(exc), 1) from None
    except Interrupted as exc:
        raise ExitWith(str(exc), 128 + exc.signum) from None
    if not is_main_process():
        return  # torchrun: rank 0 reports for the job
    click.echo(summary.describe(trainer.engine, trainer.sampler, str(trainer.device)))
    compile_seconds = getattr(trainer.learner, "compile_seconds", None)
    if compile_seconds is not None:
        click.echo(f"torch.compile: first call (compilation included) took {compile_seconds:.1f}s")


def _eval_option(*decls: str, shown: Optional[str] = None, **kwargs: Any) -> Callable:
    return click.option(*decls, default=kwargs.pop("default", None), cls=SectionedOption, shown_default=shown,
                        **kwargs)


@cli.command("eval")
@click.argument("run_arg", metavar="[RUN_DIR]", required=False, type=click.Path(path_type=Path))
@_eval_option("--run", "run_opt", type=click.Path(path_type=Path), help="the run directory (or give it as RUN_DIR)")
@_eval_option("--episodes", type=int, shown=f"the run's ({DEFAULTS['episodes']})", help="test episodes")
@_eval_option("--split", type=Choices(SPLITS), default="test", shown="test", help="which classes to test on")
@_eval_option("--checkpoint", type=Choices(("best", "last")), default="best", shown="best",
              help="best (validation) or last")
@_eval_option("--seed", type=int, shown=f"the run's eval seed ({DEFAULTS['eval_seed']})", help="episode seed")
@_eval_option("--device", shown="the run's", help="auto | cpu | cuda | cuda:N")
@_eval_option("--engine", type=Choices(ENGINES), shown="the run's", help="meta-learner engine")
@_eval_option("--ways", type=int, shown="the run's",
              help="episode classes (" + ", ".join(n for n, spec in ALGORITHMS.items() if spec.head)
              + ": an N-way output layer, so the run's N only)")
@_eval_option("--shots", type=int, shown="the run's", help="support images per class")
@_eval_option("--queries", type=int, shown="the run's", help="query images per class")
@_eval_option("--dataset", type=Choices(DATASETS.names()), shown="the run's",
              help="evaluate on another dataset's classes (cross-domain), with the run's preprocessing")
@_eval_option("--data-root", shown="the run's", help="the data of --dataset (or another copy of the run's)")
@click.option("--quiet", is_flag=True, help="no progress output")
def eval_cmd(run_arg: Optional[Path], run_opt: Optional[Path], episodes: Optional[int], split: str,
             checkpoint: str, seed: Optional[int], device: Optional[str], engine: Optional[str],
             ways: Optional[int], shots: Optional[int], queries: Optional[int], dataset: Optional[str],
             data_root: Optional[str], quiet: bool) -> None:
    """Evaluate the run in RUN_DIR: mean accuracy and 95% CI over fixed-seed episodes.

    With --dataset / --data-root: on another dataset's classes (train on mini-ImageNet, test on
    your folder), decoded and normalised like the run's training data; the file records both.
    """
    from .distributed import is_main_process
    from .evaluation import evaluate_run
    if run_arg is not None and run_opt is not None and Path(run_arg) != Path(run_opt):
        raise click.UsageError(f"two run directories given ({run_arg} and --run {run_opt}); give one")
    run_dir = run_arg if run_arg is not None else run_opt
    if run_dir is None:
        raise click.UsageError("which run? give its directory: l2l-app eval RUN_DIR")
    _check_numbers([limit_error("episodes", episodes), limit_error("eval_seed", seed, "--seed"),
                    *(limit_error(name, value) for name, value in
                      (("ways", ways), ("shots", shots), ("queries", queries)))])
    result = evaluate_run(run_dir, split=split, episodes=episodes, checkpoint=checkpoint, seed=seed,
                          device=device, engine=engine, progress=not quiet, ways=ways, shots=shots,
                          queries=queries, dataset=dataset, data_root=data_root)
    if not is_main_process():
        return  # torchrun: rank 0 reports
    p = result.protocol
    trained = f" (trained on {p['cross_domain']['trained_on']})" if p.get("cross_domain") else ""
    click.echo(f"{p['dataset']}{trained} {p['split']} {p['ways']}-way {p['shots']}-shot ({p['queries']} queries/class, "
               f"{p['checkpoint']} checkpoint, {p['batchnorm']}): accuracy {result}")
    click.echo(f"written to {Path(run_dir) / p['file']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def recipes(as_json) -> None:
    """List the published presets: source, setting and the accuracy the source reports."""
    from .recipes import load_recipe, recipe_names
    rows = [load_recipe(n) for n in recipe_names()]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    width = max(len(r.name) for r in rows)
    click.echo(f"{'recipe':<{width}}  {'setting':<7}  {'published':<15}  source")
    for r in rows:
        ci = f" ± {r.reported_ci95}" if r.reported_ci95 is not None else ""
        s = r.settings
        author, year = r.source.split(",")[0], r.source.split("(")[1].split(")")[0]
        click.echo(f"{r.name:<{width}}  {str(s['ways']) + 'w' + str(s['shots']) + 's':<7}  "
                   f"{str(r.reported_accuracy) + ci + '%':<15}  {author} {year}, {r.table}")


@cli.command()
@click.option("--recipe", default=None, help="time exactly the meta-step this recipe trains (its algorithm and "
                                             "settings, backbone, filters, meta-batch and training episode "
                                             "shape); options given on the command line override it")
@click.option("--algo", type=ALGO_SPEC[1], default="maml", show_default=True, help=ALGO_SPEC[2])
@click.option("--dataset", type=Choices(DATASETS.names()), default="omniglot", show_default=True,
              help="dataset (train split)")
@click.option("--data-root", default=None, help="dataset folder (default: bundled Omniglot)")
@click.option("--ways", type=int, default=5, show_default=True)
@click.option("--shots", type=int, default=1, show_default=True)
@click.option("--queries", type=int, default=15, show_default=True)
@click.option("--meta-batch", type=int, default=32, show_default=True, help="tasks per meta-step")
@algorithm_options
@click.option("--hidden", type=int, default=64, show_default=True, help="filters per conv layer")
@click.option("--backbone", type=Choices(BACKBONES.names()), default="conv4", show_default=True)
@click.option("--impl", "impls", default="loop,torchmeta,batched,batched-compiled", show_default=True,
              help="comma-separated: " + " | ".join(IMPLS) + " (cudagraphs: torch.compile's reduce-overhead mode; "
                   "captured: the meta-gradient as one CUDA graph, an eager stand-in on a CPU; captured-step: the "
                   "whole training step, end to end only)")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--warmup", type=int, default=None, help="untimed calls after the first (default 2 on CPU, 5 on GPU)")
@click.option("--repeats", type=int, default=None, help="timed calls (default 5 on CPU, 30 on GPU)")
@click.option("--with-sampler/--no-sampler", default=False,
              help="also time end to end: each step draws its meta-batch (tensor sampler for batched, "
                   "learn2learn TaskDataset otherwise) and steps the optimiser")
@click.option("--sweep", "sweeps", multiple=True, help="meta-batch=1,4,16,32,64 or inner-steps=1,2,5,10 (repeatable)")
@click.option("--synthetic", is_flag=True, help="random images of the dataset's shape instead of real data")
@click.option("--tf32/--no-tf32", default=False, help="allow TF32 on CUDA (default off)")
@click.option("--cudnn-benchmark/--no-cudnn-benchmark", default=False, help=CUDNN_BENCHMARK_HELP + " (default off)")
@click.option("--conv-impl", type=Choices(CONV_IMPLS), default="native", show_default=True, help=CONV_IMPL_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for bench.json, bench.md, plots")
@click.option("--overwrite", is_flag=True, help="replace an earlier bench in --out (once the new one is written)")
def bench(out, overwrite, impls, sweeps, recipe, algo, **settings) -> None:
    """Time one meta-training step of each implementation on the same weights and episodes.

    The workload is set like a training run's (the algorithm's own settings included), or with
    --recipe exactly as that recipe trains (flags given on the command line override it).
    """
    from click.core import ParameterSource

    from .bench import BenchSettings, parse_impls, parse_sweep, run_bench
    from .bench.harness import WORKLOAD_FIELDS, recipe_workload
    from .config import expand_algo_alias
    _check_numbers([limit.error(settings[option.lstrip("-")], option) for option, limit in BENCH_LIMITS.items()])
    ctx = click.get_current_context()
    given = {name for name in ("algo", *settings) if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    own = expand_algo_alias({"algo": algo, **{name: settings.pop(name) for name in list(settings)
                                               if is_algorithm_setting(name) and settings[name] is not None}})
    settings = {k: v for k, v in settings.items() if not is_algorithm_setting(k)}
    algo = own.pop("algo")
    if recipe is not None:
        workload = recipe_workload(recipe)
        if "algo" in given and algo != workload["algo"]:
            raise click.UsageError(f"--recipe {recipe} trains {workload['algo']}, which --algo {algo} contradicts; "
                                   f"drop --algo")
        algo, own = workload["algo"], {**workload["algorithm"], **own}
        settings.update({k: v for k, v in workload.items() if k in WORKLOAD_FIELDS and k in settings
                         and k not in given})
    s = BenchSettings(algo=algo, algorithm=own, impls=parse_impls(impls), recipe=recipe,
                      sweeps=dict(parse_sweep(t) for t in sweeps), **settings)
    result = run_bench(s, out, overwrite=overwrite)
    for r in result["results"]:
        if r.get("status") == "ok":
            up = r.get("speedup_vs_loop")
            click.echo(f"{r['impl']:<17} {r['mode']:<12} {r['median_ms']:10.1f} ms/step  "
                       f"{r['tasks_per_s']:8.1f} tasks/s" + (f"  {up:.2f}x vs loop" if up else ""))
        else:
            click.echo(f"{r['impl']:<17} {r['mode']:<12} {r.get('status')}: {r.get('note')}")
    click.echo(f"written to {Path(out) / 'bench.json'} and {Path(out) / 'bench.md'}")


#: the train options `l2l-app data check` takes: how the data is read, and the episode shapes
DATA_CHECK_SETTINGS = ("dataset", "data_root", "skip_bad_images", "image_size", "channels", "resize", "split_file",
                       "split_seed", "split_ratios", "label_column", "ways", "shots", "queries", "train_ways",
                       "train_shots", "train_queries")


def data_check_options(fn: Callable) -> Callable:
    """The DATA_CHECK_SETTINGS options of `train` (same help, sections and defaults) as options of `fn`."""
    specs = {spec[0]: (section, spec) for section, group in TRAIN_SECTIONS for spec in group}
    for name in reversed(DATA_CHECK_SETTINGS):
        section, spec = specs[name]
        fn = _spec_option(spec, section)(fn)
    return fn


@cli.group(cls=OneLineErrors)
def data() -> None:
    """Inspect a dataset before training (`l2l-app data check --help`)."""


@data.command("check", cls=SectionedCommand)
@data_check_options
@click.option("--json", "as_json", is_flag=True, cls=SectionedOption, section="Output",
              help="print the report as JSON")
@click.option("--quiet", is_flag=True, cls=SectionedOption, section="Output", help="no progress output")
def data_check(as_json: bool, quiet: bool, **settings: Any) -> None:
    """Will this data train?  Per split: classes, images per class, unreadable images, classes too
    small for the episodes; across splits: shared classes and duplicate images.

    Exit 0: training with this episode shape would work (warnings allowed); 1: it would fail
    (the failed checks are listed); 2: bad input.
    """
    from .datacheck import check_data
    report = check_data(settings, progress=not quiet)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        raise ExitWith(report.summary(), 1)

@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--support", "support_dir", type=click.Path(path_type=Path), required=True,
              help="folder with one sub-folder of a few images per class (class names: the folder names)")
@click.option("--query", "queries", type=click.Path(path_type=Path), multiple=True, required=True,
              help="an image file, or a folder whose images (recursively) are classified; repeatable")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="also write the predictions as CSV (image,predicted_class,probability,next_class,next_probability)")
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--checkpoint", type=Choices(("best", "last")), default="best", show_default=True,
              help="best (validation) or last")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N  [default: the run's]")
def predict(run_dir: Path, support_dir: Path, queries: Tuple[Path, ...], out: Optional[Path], overwrite: bool,
            as_json: bool, checkpoint: str, device: Optional[str]) -> None:
    """Classify new images with the run in RUN_DIR, given a few examples of each new class.

    The images are decoded and normalised like the run's training images.  Models with an
    N-way output layer (MAML, Reptile, ...) need exactly N class folders; ProtoNet takes any number.
    """
    from .predict import check_predict_output, predict_folder
    if out is not None:
        check_predict_output(out, overwrite, run_dir, support_dir, queries)
    result = predict_folder(run_dir, support_dir, queries, checkpoint=checkpoint, device=device)
    click.echo(result.to_json() if as_json else result.table())
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if out is not None:
        result.to_csv(out)
        click.echo(f"written to {out}", err=as_json)


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, type=Choices(EXPORT_FORMATS),
              help="state-dict: torch.save of the weights (and the learner's state, e.g. Meta-SGD's rates); "
                   "torchscript: a traced model for torch.jit.load; onnx: needs pip install 'l2l_app[onnx]'")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="the file to write; FILE.json beside it says how to prepare inputs and use the outputs")
@click.option("--checkpoint", type=Choices(("best", "last")), default="best", show_default=True,
              help="best (validation) or last")
@click.option("--overwrite", is_flag=True, help="replace an existing FILE and FILE.json")
def export_cmd(run_dir: Path, fmt: str, out: Path, checkpoint: str, overwrite: bool) -> None:
    """Write the trained network of RUN_DIR for use without l2l_app (ProtoNet: the embedding
    network; the others: the meta-learned initialisation with its N-way head), plus FILE.json."""
    from .export import export_run
    click.echo(export_run(run_dir, out, fmt, checkpoint, overwrite).describe())


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for report.md/.html and PNGs")
@click.option("--overwrite", is_flag=True, help="replace an earlier report in --out (once the new one is written)")
def report(run_dirs, out, overwrite) -> None:
    """Markdown + HTML report of runs: test accuracy vs the published number, learning curves, configs."""
    from .report import build_report
    paths = build_report(run_dirs, out, overwrite=overwrite)
    click.echo(f"written {paths['md']} and {paths['html']}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
