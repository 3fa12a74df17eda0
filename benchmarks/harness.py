"""The seeded training benchmarks' shared protocol: the options, one arm's training and evaluation,
and the record that is rewritten after every run (so an interrupted benchmark keeps what it finished).

A benchmark adds the common options with ``add_protocol_options`` (and ``add_record_options``),
reads them into a ``TrainingProtocol``, builds each arm's ``TrainConfig`` from it, trains and
evaluates the arm with ``train_and_evaluate`` (or ``train_arm``), and hands the rows to a
``SeededRecord``, which writes the JSON record and, with ``summarise_by``, the mean +- std table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

try:
    from timing import mean_and_std, write_run_record
except ImportError:
    from benchmarks.timing import mean_and_std, write_run_record

# (option dest, type, default, help): the settings most seeded benchmarks share, in their order
PROTOCOL_OPTIONS = (
    ("seeds", int, 3, None),
    ("images", int, 10, "training photographs"),
    ("test_images", int, 8, None),
    ("val_images", int, 1, None),
    ("epochs", int, 3, None),
    ("search_start", int, 1, None),
    ("batch_size", int, 2, None),
    ("lr", float, 2e-4, None),
    ("arch_lr", float, None, None),  # added only where a benchmark gives it a default
    ("alpha_pass", str, "same", None),
)
ALPHA_PASSES = ("same", "second")
# --smoke: one seed, 2 train / 1 test image, one step per run
SMOKE_SETTINGS = dict(seeds=1, images=2, test_images=1, val_images=1, epochs=1, search_start=0)
FigureKeys = Union[Sequence[str], Callable[[tuple], Sequence[str]]]


def add_protocol_options(parser: argparse.ArgumentParser, helps: Optional[dict] = None, **defaults) -> None:
    """Add the shared training options (``--seeds``, ``--images``, ... ``--alpha-pass``) to ``parser``.

    ``defaults`` overrides an option's default by its dest (``images=6``); a default of None
    leaves the option out (``val_images=None``). ``helps`` overrides help texts the same way.
    """
    helps = helps or {}
    for dest, kind, default, text in PROTOCOL_OPTIONS:
        default = defaults.pop(dest, default)
        if default is None:
            continue
        flag = "--" + dest.replace("_", "-")
        choices = ALPHA_PASSES if dest == "alpha_pass" else None
        parser.add_argument(flag, type=kind, default=default, choices=choices, help=helps.get(dest, text))
    if defaults:
        raise TypeError(f"add_protocol_options: no such options {sorted(defaults)}")


def add_record_options(
    parser: argparse.ArgumentParser, default_out: Path, smoke: bool = False, resume: bool = False
) -> None:
    """Add ``--smoke`` (where the benchmark has one), ``--out`` and ``--resume`` (likewise)."""
    if smoke:
        parser.add_argument(
            "--smoke", action="store_true", help="1 seed, 2 train / 1 test image, 1 step per run"
        )
    parser.add_argument("--out", type=Path, default=default_out)
    if resume:
        parser.add_argument(
            "--resume", action="store_true", help="keep the runs already in --out when its settings are these"
        )


def apply_smoke(parser: argparse.ArgumentParser, args: argparse.Namespace, **settings) -> None:
    """Shrink ``args`` to a smoke run (``SMOKE_SETTINGS``, then ``settings``); the default ``--out``
    becomes ``<name>_smoke.json`` so a smoke run never overwrites the real record."""
    for dest, value in {**SMOKE_SETTINGS, **settings}.items():
        setattr(args, dest, value)
    if args.out == parser.get_default("out"):
        args.out = args.out.with_name(f"{args.out.stem}_smoke.json")


@dataclass(frozen=True)
class TrainingProtocol:
    """The shared training settings of a seeded benchmark, read from its parsed options.

    ``arch_lr`` and ``alpha_pass`` are None where the benchmark has no such option: its runs
    then take ``TrainConfig``'s defaults.
    """

    images: int
    epochs: int
    search_start: int
    batch_size: int
    lr: float
    arch_lr: Optional[float] = None
    alpha_pass: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainingProtocol":
        """The protocol of parsed options (those ``add_protocol_options`` added)."""
        return cls(
            images=args.images,
            epochs=args.epochs,
            search_start=args.search_start,
            batch_size=args.batch_size,
            lr=args.lr,
            arch_lr=getattr(args, "arch_lr", None),
            alpha_pass=getattr(args, "alpha_pass", None),
        )

    @property
    def steps(self) -> int:
        """Training steps of one run: epochs x batches per epoch."""
        return self.epochs * math.ceil(self.images / self.batch_size)

    def config(self, data: Path, out: Path, method: str, seed: int, **changes):
        """One LiteMedSAM run's ``TrainConfig`` under this protocol; ``changes`` set or override fields."""
        from naslora_deploy.training.config import TrainConfig

        fields = dict(
            data=str(data),
            out=str(out),
            model="litemedsam",
            method=method,
            epochs=self.epochs,
            search_start=self.search_start,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            progress=False,
        )
        if self.arch_lr is not None:
            fields["arch_lr"] = self.arch_lr
        if self.alpha_pass is not None:
            fields["alpha_pass"] = self.alpha_pass
        return TrainConfig(**{**fields, **changes})


@contextlib.contextmanager
def photo_workspace(
    args: argparse.Namespace, val: Optional[int] = None, test: Optional[int] = None
) -> Iterator[Tuple[Path, Path]]:
    """A temporary folder with the benchmark's fixed photograph data set in ``data/`` (``args.images``
    training photographs, ``val`` / ``test`` held out, default ``args.val_images`` / ``args.test_images``,
    data seed 0); yields (the folder, the data set). Both are removed when the block ends."""
    from naslora_deploy.training.data.photos import write_photo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        val = args.val_images if val is None else val
        test = args.test_images if test is None else test
        yield root, write_photo_dataset(root / "data", count=args.images, seed=0, val=val, test=test)


@dataclass
class TrainedArm:
    """One trained run: its folder, its training seconds, the loaded checkpoint and its test figures."""

    run: Path
    seconds: float
    model: object
    metrics: Optional[dict] = None

    def epoch_records(self) -> List[dict]:
        """The trainer's per-epoch records (``metrics.jsonl``)."""
        lines = (self.run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line]


def train_arm(config, checkpoint: Optional[str] = "last", time_load: bool = False) -> TrainedArm:
    """Train ``config`` and load its ``checkpoint`` (None: the run folder's own pick, ``best/``
    else ``last/``); ``time_load``: the seconds include loading it, as some benchmarks recorded."""
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.training.trainer import train

    started = time.perf_counter()
    run = train(config)
    trained = time.perf_counter()
    model = load_adapter(run if checkpoint is None else run / checkpoint)
    seconds = (time.perf_counter() if time_load else trained) - started
    return TrainedArm(run, seconds, model)


def evaluate_on_test(model, test, classes, prompt: str) -> dict:
    """The evaluation protocol's figures of ``model`` on the ``test`` pairs (batches of 4)."""
    from naslora_deploy.training.evaluate import evaluate

    return evaluate(model, test, classes, batch_size=4, prompt=prompt)


def train_and_evaluate(config, test=None, classes=None) -> TrainedArm:
    """Train ``config`` and evaluate its final checkpoint (``last/``) with the prompt it trained with,
    on ``test`` (default: the test split of ``config.data``, with that data set's classes)."""
    if test is None:
        from naslora_deploy.training.data.folder import discover

        splits = discover(Path(config.data), check=False)
        test, classes = splits.split("test"), splits.classes
    arm = train_arm(config)
    arm.metrics = evaluate_on_test(arm.model, test, classes, config.prompt)
    return arm


def summarise_by(
    rows: List[dict],
    keys: Sequence[str],
    figures: FigureKeys,
    finish: Optional[Callable[[dict, List[dict]], None]] = None,
) -> List[dict]:
    """One entry per group of rows with the same ``keys`` (in first-seen order): the keys, the
    number of seeds and the mean and standard deviation of each of ``figures`` (or of
    ``figures(group)``); ``finish(entry, members)`` adds a benchmark's own figures."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    table = []
    for group, members in groups.items():
        entry = {**dict(zip(keys, group)), "seeds": len(members)}
        entry.update(mean_and_std(members, figures(group) if callable(figures) else figures))
        if finish is not None:
            finish(entry, members)
        table.append(entry)
    return table


def mean_std(entry: dict, figure: str, mean_format: str = ".4f", std_format: str = ".4f") -> str:
    """``mean +- std`` of one summarised figure."""
    return f"{entry[figure + '_mean']:{mean_format}} +- {entry[figure + '_std']:{std_format}}"


class SeededRecord:
    """A seeded benchmark's runs, written to ``args.out`` after each (see ``timing.write_run_record``).

    ``summarise(rows)`` makes the summary table; ``extra``: more settings worth keeping in the record.
    """

    def __init__(self, args: argparse.Namespace, summarise: Callable[[List[dict]], List[dict]], **extra):
        self.args = args
        self.summarise = summarise
        self.extra = extra
        self.rows: List[dict] = []
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the benchmark started."""
        return time.perf_counter() - self.started

    def table(self) -> List[dict]:
        """The summary of the runs so far."""
        return self.summarise(self.rows)

    def add(self, rows: List[dict], label: str) -> None:
        """Keep one arm's rows, say it is done and rewrite the (incomplete) record."""
        self.rows += rows
        print(f"  done {label} ({self.elapsed():.0f} s)", flush=True)
        self._write(complete=False)

    def finish(self, header: str, print_table: Callable[[List[dict]], None]) -> None:
        """Print ``header`` and the summary table (``print_table``), write the complete record, say where."""
        print(header)
        print_table(self.table())
        self._write(complete=True)
        print(f"wrote {self.args.out} ({self.elapsed():.0f} s)")

    def _write(self, complete: bool) -> None:
        write_run_record(self.args, self.table(), self.rows, self.started, complete=complete, **self.extra)
