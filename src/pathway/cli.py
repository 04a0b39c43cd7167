"""The LightningCLI every modality runs through: ``python -m <Modality> fit|validate|test|predict --config ...``."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn, Optional

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from pathway.callbacks import LambdaMonitor, MergedCheckpoint, PredictionWriter, RunSummary
from pathway.checkpoint import CheckpointError, is_url
from pathway.checkpoint_io import AtomicCheckpointIO
from pathway.data import EVERY_RANK_KEY
from pathway.module import PathwayModule, read_checkpoint
from pathway.progress import LineProgressBar
from pathway.resume import (
    LastAndBestCheckpoint, RankStates, SigtermCheckpoint, resolve_last_checkpoint, resume_candidates,
)


log = logging.getLogger(__name__)

# In a file (a SLURM .out) progress is whole lines (``LineProgressBar``): one every this many batches.
FILE_PROGRESS_REFRESH_RATE = 50


class _RankZeroAndOwnFiles(logging.Filter):
    """Rank 0's records, and every rank's records about the files it read (``pathway.data.EVERY_RANK``), marked with
    the rank as Lightning marks its own per-rank lines: a bad file that only rank 1 read must still be named."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = rank_zero_only.rank
        if rank == 0:
            return True
        if getattr(record, EVERY_RANK_KEY, False):
            record.rank_prefix = f"[rank: {rank}] "
            return True
        return False


def show_project_logs(names: Iterable[str]) -> None:
    """Print the INFO lines of the project's loggers (``pathway`` and the modality packages) on rank 0, and the lines
    about the files a rank read on every rank (``_RankZeroAndOwnFiles``).

    They carry what a user checks first in a run's output (effective lr, layers with a pathway, dataset sizes,
    skipped files, the point-ops backend).  Where the program already configured logging (a root handler, e.g.
    pytest's capture), the records just propagate to it.
    """
    if logging.getLogger().handlers:
        for name in names:
            logging.getLogger(name).setLevel(logging.INFO)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(rank_prefix)s%(levelname)s %(name)s: %(message)s",
                                           defaults={"rank_prefix": ""}))
    handler.addFilter(_RankZeroAndOwnFiles())
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


def default_progress_bar() -> ProgressBar:
    """On a terminal Lightning's TQDM bar, keeping one line per epoch (with the val metrics) so the history stays
    readable; in a file (a SLURM ``.out``, CI) whole lines, every ``FILE_PROGRESS_REFRESH_RATE`` batches and per
    epoch, since a redrawn bar there is ``\\r``-joined updates with warnings spliced in."""
    if sys.stdout.isatty():
        return TQDMProgressBar(leave=True)
    return LineProgressBar(every_n_batches=FILE_PROGRESS_REFRESH_RATE)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_known_noise() -> None:
    """Silence what every run printed and no user acts on: Lightning's advertising tips (litlogger, litmodels) and
    torch's ``LeafSpec`` deprecation, raised inside Lightning's own pytree helper."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


class PathwayArgumentParser(LightningArgumentParser):
    """A usage error says what is wrong first, in two lines, instead of after a usage text of a hundred lines."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or callable(self._error_handler):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        subcommand = " fit|validate|test|predict" if parser._subcommands_action else ""
        sys.stderr.write(f"error: {message}\nusage: {prog}{subcommand} --config FILE [--section.key VALUE ...]; "
                         f"all options: {prog}{subcommand.replace('|validate|test|predict', '')} --help\n")
        self.exit(2)


def config_files(tokens: list[str]) -> list[str]:
    """The ``--config``/``-c`` files of a command line, in order."""
    files = []
    for i, token in enumerate(tokens):
        if token in ("--config", "-c") and i + 1 < len(tokens):
            files.append(tokens[i + 1])
        elif token.startswith("--config="):
            files.append(token.split("=", 1)[1])
    return files


def _read_yaml(path: str) -> dict:
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}  # not a readable file: the parser's own error names it
    return content if isinstance(content, dict) else {}


def _checked_before_parsing(value: Optional[str]) -> None:
    """``overlay_of`` is read from the files by ``config_order_error``; the parsed config (``--print_config``,
    ``config.yaml`` of the run) is a whole recipe, which a later run may use alone."""
    return None


def config_order_error(tokens: list[str], command: Optional[str]) -> Optional[str]:
    """Why the ``--config`` files of ``tokens`` make another experiment than their comments say, else ``None``.

    A config may say which entry point reads it (``entry_point: Point.seg``), and an overlay which recipe it adds to
    (``overlay_of: in1k_vitb.yaml``, relative to the overlay's folder).  Later files override earlier ones, so an
    overlay given alone trains on code defaults, and one given before its recipe is overridden back to the baseline:
    both are refused, naming the command to run.  A copy of the recipe under the same file name counts as the recipe.
    """
    subcommand = next((t for t in tokens if t in EVALUATION or t == "fit"), "fit")
    files = config_files(tokens)
    for position, file in enumerate(files):
        content = _read_yaml(file)
        wanted = content.get("entry_point")
        if command and wanted and str(wanted) != command:
            return (f"{file} is a config of `python -m {wanted}` (entry_point: {wanted}), not of python -m {command}: "
                    f"run python -m {wanted} {' '.join(tokens)}")
        base = content.get("overlay_of")
        if not base:
            continue
        base_path = Path(file).parent / str(base)
        names = [Path(other).name for other in files]
        if base_path.name in names[:position]:
            continue
        right = f"python -m {command or '<Modality>'} {subcommand} --config {base_path} --config {file}"
        if base_path.name in names[position + 1:]:
            return (f"{file} is an overlay of {base_path.name} and comes before it: later --config files override "
                    f"earlier ones, so this runs the baseline recipe. Give the recipe first: {right}")
        return (f"{file} is an overlay of {base_path.name} (overlay_of: {base}): alone it trains on code defaults, not "
                f"the recipe. Give the recipe first: {right}")
    return None


def default_loggers(root: str) -> list[Logger]:
    """CSV (``metrics.csv``) and TensorBoard, in the same ``lightning_logs/version_N`` folder of the run."""
    csv = CSVLogger(root)
    return [csv, TensorBoardLogger(root, version=csv.version, sub_dir="tensorboard", default_hp_metric=False)]


EVALUATION = ("validate", "test", "predict")
# Model settings that may differ from a checkpoint's: they change neither what it computes nor how it trains.
RUNTIME_SETTINGS = frozenset({"compile_backend", "compile_mode", "trust_pickle", "partial_target"})


def _plain(value: Any) -> Any:
    """A config or hyper-parameter value in comparable form (tuples and lists alike, paths as strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _finished_run(ckpt_path: str, checkpoint: Mapping[str, Any], trainer: Any) -> Optional[str]:
    """What to say when ``checkpoint`` already reached the Trainer's ``max_epochs``/``max_steps`` (the limits and
    counters ``FitLoop.done`` uses), else ``None``."""
    max_steps = trainer.get("max_steps")
    max_steps = -1 if max_steps is None else int(max_steps)
    max_epochs = trainer.get("max_epochs")
    max_epochs = (1000 if max_steps == -1 else -1) if max_epochs is None else int(max_epochs)
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = ((fit_loop.get("epoch_progress") or {}).get("current") or {}).get("processed")
    epochs = int(checkpoint.get("epoch", -1)) + 1 if epochs is None else int(epochs)
    steps = int(checkpoint.get("global_step", 0))
    if max_steps != -1 and steps >= max_steps:
        reached = f"max_steps={max_steps} (step {steps})"
    elif max_epochs != -1 and epochs >= max_epochs:
        reached = f"max_epochs={max_epochs} ({epochs} epochs done)"
    else:
        return None
    return (f"{ckpt_path}: this run is finished, it reached {reached}; nothing to resume. To train longer, raise "
            f"--trainer.max_epochs / --trainer.max_steps; to evaluate it, use test/validate/predict --ckpt_path")


class PathwayCLI(LightningCLI):
    """Adds the always-on callbacks as their own config sections, and links the class count data → model.

    Checkpoints are written atomically (``AtomicCheckpointIO``, unless a ``CheckpointIO`` plugin is configured),
    a SIGTERM writes the last checkpoint, and ``--ckpt_path last`` resumes from the newest checkpoint of the run
    (see ``pathway.resume``).  Checkpoints are local files read weights-only; a resumed or evaluated run is the
    checkpoint's model, with its settings (``_parse_ckpt_path``).  Unless configured otherwise, runs log to CSV and
    TensorBoard, show progress (``default_progress_bar``; any ``ProgressBar`` in ``trainer.callbacks`` replaces it)
    and ``predict`` writes ``predictions.csv``.  The optimizer is the model's (layer-decay AdamW with warmup +
    cosine): ``--optimizer``/``--lr_scheduler`` are refused instead of silently replacing it.  The ``--config``
    files are checked against their ``entry_point`` and ``overlay_of`` keys before parsing (``config_order_error``).
    """

    monitor: str = "val/acc1"
    _finished: Optional[str] = None
    _arg_tokens: list[str] = []

    command: Optional[str] = None
    _run_dir: Optional[Path] = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--entry_point", type=Optional[str], default=None,
                            help="the module that runs this config (python -m ENTRY_POINT); another one refuses it")
        parser.add_argument("--overlay_of", type=_checked_before_parsing, default=None,
                            help="the recipe (relative to this file) that this overlay must follow on the command line")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Settings a modality's model must share with its data (e.g. Audio's fbank grid) are given once, in `data:`.
        for name, apply_on in getattr(self.datamodule_class, "linked_to_model", {}).items():
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on=apply_on)
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch={epoch}-{monitor}",  # e.g. best-epoch=3-val_acc1=0.8700.ckpt
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LambdaMonitor, "lambda_monitor")
        parser.add_lightning_class_args(MergedCheckpoint, "merged_export")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(RunSummary, "run_summary")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        replaced = [key for key in ("optimizer", "lr_scheduler") if config.get(key) is not None]
        if replaced:
            self._parser(self.subcommand).error(
                f"--{' / --'.join(replaced)} would replace the model's optimizer (AdamW with layer-wise lr decay, λ "
                "without weight decay) and its warmup + cosine schedule; set model.lr or model.blr, "
                "model.layer_decay, model.weight_decay, model.betas, model.warmup_epochs and model.min_lr instead"
            )
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [SigtermCheckpoint(), RankStates()]}
        if self.subcommand in EVALUATION:
            # Restoring the checkpoint callback's state into a new version folder; nothing is saved when evaluating.
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        if self.subcommand == "fit" and config.trainer.get("fast_dev_run"):
            # Lightning's ModelCheckpoint still writes last.ckpt at the end of a fast_dev_run, which `--ckpt_path last`
            # would then resume as if it were the run.
            config.checkpoint.save_last = False

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._arg_tokens = [str(a) for a in (sys.argv[1:] if args is None else args if isinstance(args, list) else [])]
        problem = config_order_error(self._arg_tokens, self.command)
        if problem:
            parser.error(problem)
        super().parse_arguments(parser, args)

    def _given(self, key: str, value: Any, default: Any) -> bool:
        """Whether the user set ``model.<key>``: a value other than the default, or named on the command line
        (``--model.aux_ckpts []`` equals the default, yet says "no pathway")."""
        flag = f"--model.{key}"
        return _plain(value) != _plain(default) or any(t == flag or t.startswith(flag + "=") for t in self._arg_tokens)

    def _parse_ckpt_path(self) -> None:
        """Where the weights come from, checked before anything is built (replaces Lightning's version).

        Lightning reads the hyper-parameters of a ``--ckpt_path`` file into the model config, silently replacing
        every ``--model.*`` given, skips ``last``, and lets the Trainer fetch and unpickle a URL.  Here ``last`` is
        resolved first (``pathway.resume``); a URL, a missing file, another model's checkpoint, or an evaluation with
        no trained weights is refused; the file is read weights-only, errors naming it; the checkpoint's settings
        become the model's (``apply_checkpoint_settings``), and a finished run is not resumed.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config, parser = self.config[subcommand], self._parser(subcommand)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None:
            if subcommand in EVALUATION and not config.model.get("target_ckpt"):
                parser.error(
                    f"{subcommand} needs trained weights: pass --ckpt_path CKPT (a checkpoint of a run, or `last` for "
                    f"the newest under --trainer.default_root_dir) or --model.target_ckpt FILE; without either it "
                    f"would {subcommand} a randomly initialised model"
                )
            return
        ckpt_path = str(ckpt_path)
        if is_url(ckpt_path):
            parser.error(f"--ckpt_path {ckpt_path}: is a URL; checkpoints are read from local files only (nothing is "
                         f"downloaded, and Lightning would unpickle a remote file): download it, check it, pass the "
                         f"local path")
        if ckpt_path == "last":
            root, dirpath = config.trainer.get("default_root_dir") or os.getcwd(), config.checkpoint.get("dirpath")
            if subcommand in EVALUATION and not resume_candidates(root, dirpath):
                parser.error(
                    f"--ckpt_path last: no checkpoint to {subcommand} under {dirpath or root} (last*.ckpt in "
                    f"*/checkpoints/, hpc_ckpt_*.ckpt); pass the run's --trainer.default_root_dir or --ckpt_path FILE"
                )
            config.ckpt_path = ckpt_path = resolve_last_checkpoint(root, dirpath)
            if ckpt_path is None:
                return
        if ckpt_path in ("best", "hpc"):  # the Trainer's own names for a file it tracks
            return
        if not Path(ckpt_path).is_file():
            parser.error(f"--ckpt_path {ckpt_path}: no such file")
        checkpoint = read_checkpoint(ckpt_path, trust_pickle=bool(config.model.get("trust_pickle")))
        recorded = checkpoint.get("pathway_module_class") or checkpoint["hyper_parameters"].get("_class_path")
        expected = f"{self.model_class.__module__}.{self.model_class.__qualname__}"
        if recorded and str(recorded) != expected:
            parser.error(f"--ckpt_path {ckpt_path}: was written by {recorded}, and this command builds {expected}: "
                         f"use that model's command (python -m {str(recorded).split('.')[0]} {subcommand} ...)")
        self.apply_checkpoint_settings(ckpt_path, checkpoint)
        if subcommand == "fit":
            self._finished = _finished_run(ckpt_path, checkpoint, config.trainer)

    def apply_checkpoint_settings(self, ckpt_path: str, checkpoint: dict[str, Any]) -> None:
        """Make the model config the checkpoint's hyper-parameters, so logs and ``hparams.yaml`` tell the truth.

        A resumed or evaluated run is the checkpoint's model: a ``--model.*`` value given that differs from the
        checkpoint's is refused for ``fit`` (the restored optimizer and schedule would silently keep the old one)
        and named as ignored for evaluation.  Free to differ: ``RUNTIME_SETTINGS``, the settings linked from
        ``data``, and where files are: ``target_ckpt`` (not read again), and ``aux_ckpts`` with the same count
        (frozen aux held by reference are looked up there by sha256; other aux weights are in the checkpoint).
        """
        subcommand = self.config.subcommand
        model, parser = self.config[subcommand].model, self._parser(subcommand)
        defaults = parser.get_defaults().model
        linked = {"num_classes", *getattr(self.datamodule_class, "linked_to_model", {})}
        by_reference = bool(checkpoint.get("pathway_aux_sha256"))
        changed, not_read = [], []
        for key, value in checkpoint["hyper_parameters"].items():
            if key.startswith("_") or key in linked or key in RUNTIME_SETTINGS or key not in model:
                continue
            given = model[key]
            if _plain(given) == _plain(value):
                continue
            explicit = self._given(key, given, defaults.get(key))
            if key == "aux_ckpts" and explicit and len(given) == len(value) and by_reference:
                continue  # where the frozen aux files are now: verified against the checkpoint's sha256
            if key in ("target_ckpt", "aux_ckpts") and explicit and (key == "target_ckpt" or len(given) == len(value)):
                not_read.append(f"--model.{key} {given}")
            elif explicit:
                changed.append(f"--model.{key} {given!r} (the checkpoint's: {value!r})")
            model[key] = value
        if not_read:
            log.info("%s: %s not read: the weights are in the checkpoint", ckpt_path, "; ".join(not_read))
        if not changed:
            return
        if subcommand == "fit":
            parser.error(
                f"--ckpt_path {ckpt_path} resumes a run with its own settings, and these differ: {'; '.join(changed)}. "
                f"Drop them to resume, or start a new run from it with --model.target_ckpt {ckpt_path}"
            )
        log.warning("%s: %s with the checkpoint's settings; ignored: %s", ckpt_path, subcommand, "; ".join(changed))

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path") if self.subcommand else None
        if ckpt_path and Path(str(ckpt_path)).is_file():
            with PathwayModule.restoring():  # the trained weights and the pathway come from the checkpoint
                super().instantiate_classes()
            return
        super().instantiate_classes()
        missing = getattr(self.model, "target_missing_keys", None)
        if self.subcommand in EVALUATION and missing:
            raise CheckpointError(
                f"{config.model.target_ckpt}: {self.subcommand} without --ckpt_path evaluates model.target_ckpt, which "
                f"leaves {len(missing)} weights at random init (e.g. {missing[:5]}); pass --ckpt_path of a trained run"
            )

    def fit(self, **kwargs: Any) -> None:
        """``Trainer.fit``, unless ``--ckpt_path`` is a run that already finished: resubmitting it says so instead of
        "resuming" into a new, empty version folder."""
        if self._finished:
            log.warning("%s", self._finished)
            return
        self.trainer.fit(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a run that fails before its first training step leaves no ``version_N`` folder behind."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self._remove_unused_run_dir()
            raise

    def _remove_unused_run_dir(self) -> None:
        run_dir = self._run_dir
        if (run_dir is None or not run_dir.is_dir() or not self.trainer.is_global_zero or self.trainer.global_step
                or any(run_dir.rglob("*.ckpt"))):
            return
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s: the run failed before its first training step", run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.pop("plugins", None)
        if plugins is None:
            plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            trust_pickle = bool(getattr(getattr(self, "model", None), "hparams", {}).get("trust_pickle", False))
            plugins.append(AtomicCheckpointIO(trust_pickle=trust_pickle))
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir") or os.getcwd())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, default_progress_bar()]
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        csv = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if csv is not None and not Path(csv.log_dir).exists():
            self._run_dir = Path(csv.log_dir)  # made by this run (a fixed, existing version is never removed)
        return trainer


def run_cli(model_class: type, datamodule_class: type, args: Optional[list[str]] = None,
            monitor: str = "val/acc1", run: bool = True, command: Optional[str] = None) -> LightningCLI:
    """Run the CLI for one modality; ``monitor`` is the metric that picks the best checkpoint.  ``command`` is the
    entry point's module (``python -m <command>``): its ``--help`` is titled so, and a config whose ``entry_point``
    names another module is refused (without it, as in the demo, the modality is the model's package, unchecked)."""
    package = model_class.__module__.split(".")[0]
    show_project_logs(dict.fromkeys(["pathway", package, datamodule_class.__module__.split(".")[0]]))
    quiet_known_noise()
    cli_class = type("PathwayCLI", (PathwayCLI,), {"monitor": monitor, "command": command})
    command = command or package
    return cli_class(
        model_class,
        datamodule_class,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_class=PathwayArgumentParser,
        parser_kwargs={"prog": f"python -m {command}"},
    )
