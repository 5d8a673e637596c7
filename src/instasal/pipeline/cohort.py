"""Explain every subject of a BIDS-like dataset and gather one cohort lesion table.

Survives reality: every subject's outputs and its status record are written atomically, so a run
killed at any moment (even ``kill -9``) resumes where it stopped with nothing lost or corrupted; a
failing subject is recorded and reported without stopping the others; seeds are derived per subject
so results do not depend on the order or the executor. Executors: in-process (default) or Ray
(``pip install instasal[ray]``), one task per subject. Several workers may run on one cohort
folder at once: each subject is explained under a lock (``status/<id>.lock``), so a subject is
never written by two workers; one held by a live worker is skipped, one left by a dead worker is
taken over.
"""

from __future__ import annotations

import errno
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from instasal.channels import check_channel_files
from instasal.dataset import SubjectFiles, discover_dataset
from instasal.errors import (
    ConfigurationError,
    InstasalError,
    InstasalWarning,
    OutputExistsError,
    OutputLockedError,
    StateFileError,
    one_line,
)
from instasal.folders import (
    check_output_folder,
    hold_lock,
    model_files,
    output_folder_lock,
    read_state_file,
    refuse_writing_over_inputs,
)
from instasal.io import atomic_write_json
from instasal.models import card_of, load_model
from instasal.pipeline.explain import explain_subject, model_fingerprint
from instasal.pipeline.outputs import (
    COHORT_TRUST_TABLES,
    remove_run,
    write_json_unless_same,
    write_text_unless_same,
)
from instasal.pipeline.settings import DEFAULT_BUDGET_S, ExplainSettings, run_key
from instasal.pipeline.tn_pools import tn_pool_mask, tn_pool_path
from instasal.progress import silent_progress
from instasal.typing import Executor, PathLike, Progress, TnPool, check_choice

__all__ = ["CohortResult", "run_cohort", "subject_seed"]


def subject_seed(seed: int, subject_id: str) -> int:
    """A seed for one subject, from the cohort seed and the subject id (order-independent)."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(subject_id.encode("utf-8"))])
    return int(sequence.generate_state(1)[0])


@dataclass(frozen=True)
class CohortResult:
    """What :func:`run_cohort` produced.

    Attributes
    ----------
    done, failed
        Subjects finished, and those failed with their errors, as their status records say when
        the table was gathered (whichever worker explained them).
    skipped
        Subjects not explained again: done by an earlier run, or done or failed by another
        worker while this run went on.
    held
        Subjects another live worker was explaining when this run came to them (skipped here).
    pending
        Subjects not finished when the table was gathered (held by another worker); a later
        run gathers them.
    """

    out: Path
    table: pd.DataFrame
    done: list[str]
    failed: dict[str, str]
    skipped: list[str]
    seconds_per_subject: float
    held: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def table_path(self) -> Path:
        return self.out / "lesions.tsv"


def _status_path(out: Path, subject_id: str) -> Path:
    return out / "status" / f"{subject_id}.json"


def _subject_lock(out: Path, subject_id: str) -> Path:
    return out / "status" / f"{subject_id}.lock"


def _read_status(out: Path, subject_id: str, key: str) -> dict[str, Any] | None:
    """The subject's status record when a run with ``key`` wrote it (a corrupt one is noted)."""
    path = _status_path(out, subject_id)
    if not path.exists():
        return None
    try:
        status = read_state_file(path, recovery="explaining the subject again")
    except StateFileError as error:
        warnings.warn(str(error), InstasalWarning, stacklevel=2)
        return None
    return status if status.get("cohort_key") == key else None


# errors of the output file system: every later subject would fail the same way, so they stop
# the cohort (the CLI says what happened and that a rerun resumes)
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _explain_one(
    subject: SubjectFiles,
    model: nn.Module,
    out: Path,
    settings: ExplainSettings,
    key: str,
    options: CohortOptions,
    since: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Explain one subject (max aggregation, and mean when asked); return its status record.

    ``progress`` (this process's runs only) receives the subject's own stages.

    The subject is held by its lock meanwhile; when another live worker holds it the record's
    state is ``held`` (nothing is written). A subject another worker finished (done, or failed
    after this run began at ``since``, a Unix time) is not explained again: state ``reused``.
    """
    lock = _subject_lock(out, subject.subject_id)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with hold_lock(lock, what=f"{out}: subject {subject.subject_id}"):
            finished = _read_status(out, subject.subject_id, key) or {}
            done_before = not options.overwrite and finished.get("state") == "done"
            if done_before or float(finished.get("finished_at", 0.0)) >= since:
                return finished | {"state": "reused"}
            return _explain_held(subject, model, out, settings, key, options, progress)
    except OutputLockedError as error:
        return {
            "cohort_key": key,
            "subject": subject.subject_id,
            "state": "held",
            "error": str(error),
        }


def _explain_held(
    subject: SubjectFiles,
    model: nn.Module,
    out: Path,
    settings: ExplainSettings,
    key: str,
    options: CohortOptions,
    progress: Progress | None,
) -> dict[str, Any]:
    """:func:`_explain_one` once the subject is held: explain it, write its status record."""
    started = time.perf_counter()
    seed = subject_seed(settings.smoothgrad.seed, subject.subject_id)
    subject_settings = replace(settings, smoothgrad=replace(settings.smoothgrad, seed=seed))
    status: dict[str, Any] = {"cohort_key": key, "subject": subject.subject_id}
    try:
        tissue = tn_pool_mask(subject, options.tn_from, out / "tn_pools")
        explain_subject(
            subject.images,
            model,
            out / subject.subject_id,
            reference=subject.lesion_mask,
            tissue_mask=tissue,
            regions=subject.region_map,
            settings=replace(
                subject_settings,
                smoothgrad=replace(subject_settings.smoothgrad, aggregation="max"),
            ),
            overwrite=options.overwrite,
            ignore_channel_names=options.ignore_channel_names,
            budget_s=options.budget_s,
            progress=None if progress is None else _of_subject(progress, subject.subject_id),
            mean_out=out / subject.subject_id / "mean" if options.with_mean else None,
        )
        status |= {"state": "done"}
    except InstasalError as error:
        status |= {"state": "failed", "error": str(error)}
    except Exception as error:  # a bug: recorded with its traceback, the cohort goes on
        if isinstance(error, OSError) and error.errno in _FATAL_ERRNOS:
            raise
        status |= {
            "state": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }
    status["seconds"] = time.perf_counter() - started
    status["finished_at"] = time.time()
    atomic_write_json(_status_path(out, subject.subject_id), status, overwrite=True)
    return status


def _gather(
    out: Path, subjects: Sequence[str], folder: str = "", name: str = "lesions"
) -> pd.DataFrame:
    frames = []
    for subject_id in subjects:
        root = out / subject_id / folder if folder else out / subject_id
        tables = sorted(root.glob(f"*_{name}.tsv"))
        if not tables:
            continue
        frame = pd.read_csv(tables[0], sep="\t", na_values=["n/a"], keep_default_na=False)
        frame.insert(0, "subject", subject_id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_cohort(
    dataset: PathLike,
    model: str,
    out: PathLike,
    *,
    settings: ExplainSettings | None = None,
    executor: Executor = "local",
    address: str | None = None,
    with_mean: bool = False,
    overwrite: bool = False,
    subjects: Sequence[str] | None = None,
    progress: Progress | None = None,
    trust_model_code: bool = False,
    ignore_channel_names: bool = False,
    tn_from: TnPool = "wm",
    budget_s: float | None = DEFAULT_BUDGET_S,
) -> CohortResult:
    """Run :func:`~instasal.pipeline.explain_subject` over every subject of ``dataset``.

    Parameters
    ----------
    dataset
        A BIDS-like folder (``instasal phantom`` output or a user's: FLAIR and T1w per subject,
        optional lesion masks under ``derivatives/``).
    model
        A built-in name or a model path (loaded once per worker).
    out
        Cohort output folder: one sub-folder per subject, ``status/``, ``cohort.json`` and the
        gathered ``lesions.tsv`` (and ``lesions_mean.tsv`` with ``with_mean``; with
        ``settings.trust`` also ``profiles.tsv``, ``trust_randomisation.tsv`` and
        ``trust_curves.tsv``, the trust checks of the max-aggregation runs).
    executor
        ``"local"`` (in-process, default) or ``"ray"`` (one task per subject; ``address`` of an
        existing cluster, else a local instance; one GPU per task when CUDA is there).
    with_mean
        Also compute mean-aggregation maps (for the aggregation-vs-size analysis).
    overwrite
        Recompute everything; without it a run with the same key resumes and skips finished
        subjects, and a run with another key is refused.
    subjects
        Only these subject ids.
    trust_model_code
        Let the model run code from its own files (:func:`instasal.models.load_model`).
    ignore_channel_names
        Take each subject's files as the model's channels even where their names say another
        order (:func:`instasal.channels.check_channel_files`); without it every subject's files
        are checked before the first is explained, and a mismatch is refused.
    tn_from
        Where TN domains are drawn (:mod:`instasal.pipeline.tn_pools`): ``"wm"`` (white matter,
        else the brain; the default), ``"gm"`` or ``"brain"``; recorded in ``cohort.json``.
    budget_s
        Per subject: a saliency stage estimated over this many seconds is refused (the subject
        fails with the estimate and the choices; :func:`~instasal.pipeline.explain_subject`'s
        ``budget_s``); ``None``: no budget.
    """
    options = CohortOptions(
        with_mean,
        overwrite,
        executor,
        address,
        trust_model_code,
        ignore_channel_names,
        tn_from,
        budget_s,
    )
    settings = settings or ExplainSettings()
    check_output_folder(out)
    run = open_cohort(dataset, model, Path(out), settings, subjects, options)
    plan = pending_subjects(run)
    explained = explain_subjects(run, plan, progress or silent_progress)
    return gather_cohort(run, plan, explained)


def _of_subject(progress: Progress, subject_id: str) -> Progress:
    """``progress`` with each of one subject's stages named after the subject."""

    def update(stage: str, done: float, total: float) -> None:
        progress(f"{stage} ({subject_id})", done, total)

    return update


@dataclass(frozen=True)
class CohortOptions:
    """How a cohort runs, besides its settings (the parameters of :func:`run_cohort`)."""

    with_mean: bool
    overwrite: bool
    executor: Executor
    address: str | None
    trust_model_code: bool
    ignore_channel_names: bool
    tn_from: TnPool
    budget_s: float | None


@dataclass(frozen=True, eq=False)
class CohortRun:
    """Stage 1, validate and key: the subjects, the model loaded once, the run key, and when
    this run began (``since``: a subject finished by another worker after it is not redone)."""

    out: Path
    subjects: list[SubjectFiles]
    network: nn.Module
    model: str
    key: str
    since: float
    settings: ExplainSettings
    options: CohortOptions


def open_cohort(
    dataset: PathLike,
    model: str,
    out: Path,
    settings: ExplainSettings,
    subjects: Sequence[str] | None,
    options: CohortOptions,
) -> CohortRun:
    """Check the options, subjects and their channel files, key the run and write
    ``cohort.json`` (refusing a folder of another run unless ``overwrite``)."""
    check_choice("tn_from", options.tn_from, TnPool)
    check_choice("executor", options.executor, Executor)
    found = discover_dataset(dataset)
    read_from = [*model_files(model), *(path for s in found for path in _subject_files(s))]
    if subjects is not None:
        wanted = set(subjects)
        unknown = wanted - {s.subject_id for s in found}
        if unknown:
            raise ConfigurationError(f"{dataset}: no subject(s) {sorted(unknown)} in the dataset")
        found = [s for s in found if s.subject_id in wanted]
    network = load_model(model, trust_code=options.trust_model_code)
    if not options.ignore_channel_names:
        card = card_of(network)
        for subject in found:
            check_channel_files(subject.images, card.channel_names, model=card.name)
    payload = {
        "dataset": str(Path(dataset).resolve()),
        "model": model_fingerprint(network),
        "settings": settings.as_dict(),
        "with_mean": options.with_mean,
    }
    # the default pool leaves the key as before the option existed: earlier runs still resume
    key = run_key(payload if options.tn_from == "wm" else payload | {"tn_from": options.tn_from})
    since = time.time()
    refuse_writing_over_inputs(_cohort_files(out, [s.subject_id for s in found]), read_from)
    with output_folder_lock(out, wait=True):
        if options.overwrite:
            _remove_earlier_run(out, found, options, settings.trust)
        _write_manifest(out, key, dataset, model, settings, options, found)
    return CohortRun(out, found, network, model, key, since, settings, options)


@dataclass(frozen=True, eq=False)
class CohortPlan:
    """Stage 2, plan: the subjects to explain, and the ids of those finished under this key."""

    todo: list[SubjectFiles]
    skipped: list[str]


def pending_subjects(run: CohortRun) -> CohortPlan:
    """The subjects whose status record under this key does not say done (all of them with
    ``overwrite``), and the others as skipped."""
    todo, skipped = [], []
    overwrite = run.options.overwrite
    for subject in run.subjects:
        status = None if overwrite else _read_status(run.out, subject.subject_id, run.key)
        if status is not None and status.get("state") == "done":
            skipped.append(subject.subject_id)
        else:
            todo.append(subject)
    return CohortPlan(todo, skipped)


@dataclass(frozen=True, eq=False)
class ExplainedSubjects:
    """Stage 3, explain: the status record of each subject this run came to, and the seconds
    explaining them took."""

    statuses: list[dict[str, Any]]
    seconds: float


def explain_subjects(run: CohortRun, plan: CohortPlan, notify: Progress) -> ExplainedSubjects:
    """Each subject to explain, in this process or as a Ray task; both executors call one
    :func:`_explain_one` bound to this run."""
    options = run.options
    total, n_skipped = len(run.subjects), len(plan.skipped)
    notify("subjects", n_skipped, total)
    explain_one = partial(
        _explain_one,
        out=run.out,
        settings=run.settings,
        key=run.key,
        options=options,
        since=run.since,
    )
    started = time.perf_counter()
    if options.executor == "ray":
        statuses = _run_ray(
            plan.todo,
            explain_one,
            run.model,
            options.address,
            lambda done: notify("subjects", n_skipped + done, total),
            options.trust_model_code,
            partial(_lost_by_ray, out=run.out, key=run.key, since=run.since),
        )
        return ExplainedSubjects(statuses, time.perf_counter() - started)
    statuses = []
    for subject in plan.todo:
        done = n_skipped + len(statuses)
        notify(f"subjects of cohort: explaining {subject.subject_id}", done, total)
        statuses.append(explain_one(subject, run.network, progress=notify))
        notify("subjects", done + 1, total)
    return ExplainedSubjects(statuses, time.perf_counter() - started)


def gather_cohort(run: CohortRun, plan: CohortPlan, explained: ExplainedSubjects) -> CohortResult:
    """Stage 4, gather: every subject's state as the status records say now (any worker's), the
    finished subjects' tables gathered, under the folder's lock."""
    statuses = explained.statuses
    skipped = [*plan.skipped, *(s["subject"] for s in statuses if s["state"] == "reused")]
    held = [s["subject"] for s in statuses if s["state"] == "held"]
    for status in statuses:
        if status["state"] == "held":
            warnings.warn(f"{status['error']}; skipped here", InstasalWarning, stacklevel=3)
    with output_folder_lock(run.out, wait=True):
        done, failed, pending = _final_states(run.out, run.subjects, run.key, held)
        table = _write_tables(run.out, done, failed, run.options.with_mean, run.settings.trust)
    explained_here = len(plan.todo) - len(held)
    per_subject = explained.seconds / explained_here if explained_here > 0 else 0.0
    return CohortResult(run.out, table, done, failed, skipped, per_subject, held, pending)


def _write_manifest(
    out: Path,
    key: str,
    dataset: PathLike,
    model: str,
    settings: ExplainSettings,
    options: CohortOptions,
    found: Sequence[SubjectFiles],
) -> None:
    """Refuse a cohort folder of another run, or holding a file the cohort writes that no
    ``cohort.json`` accounts for (unless ``overwrite``); write ``cohort.json``."""
    manifest_path = out / "cohort.json"
    if manifest_path.exists() and not options.overwrite:
        previous = read_state_file(manifest_path).get("cohort_key")
        if previous != key:
            raise OutputExistsError(
                f"{out}: holds a cohort run with other data, model or settings "
                f"(key {previous}, now {key}); pass --overwrite to replace it"
            )
    existing = [p for p in _cohort_files(out, [s.subject_id for s in found]) if p.exists()]
    if existing and not manifest_path.exists() and not options.overwrite:
        raise OutputExistsError(
            f"{existing[0]}: exists already and no cohort.json says a cohort run wrote it; "
            "pass --overwrite to replace it"
        )
    write_json_unless_same(
        manifest_path,
        {
            "cohort_key": key,
            "dataset": str(dataset),
            "model": model,
            "settings": settings.as_dict(),
            "with_mean": options.with_mean,
            "tn_from": options.tn_from,
            "executor": options.executor,
            "subjects": [s.subject_id for s in found],
        },
    )


def _subject_files(subject: SubjectFiles) -> list[Path]:
    """Every file of ``subject`` a cohort reads: its channels and derivative masks."""
    masks = (subject.lesion_mask, subject.brain_mask, subject.wm_mask, subject.regions)
    return [*subject.images, *(p for p in (*masks, subject.region_atlas) if p is not None)]


def _cohort_files(out: Path, subject_ids: Sequence[str]) -> list[Path]:
    """The files a cohort writes in ``out`` besides its subjects' explain folders."""
    tables = ["lesions", "lesions_mean", *COHORT_TRUST_TABLES]
    return [
        out / "cohort.json",
        out / "failures.json",
        *(out / f"{name}.tsv" for name in tables),
        *(_status_path(out, subject_id) for subject_id in subject_ids),
        *(tn_pool_path(out / "tn_pools", subject_id) for subject_id in subject_ids),
    ]


def _remove_earlier_run(
    out: Path, found: Sequence[SubjectFiles], options: CohortOptions, trust: bool
) -> None:
    """Before an overwrite: remove what the earlier run in ``out`` wrote that this one will not
    write again, so that no earlier subject's results stay beside this run's.

    The earlier subjects are those its ``cohort.json`` lists and those with a status record; of
    each, its explain folders (:func:`~instasal.pipeline.outputs.remove_run`), status record and
    TN pool go. The gathered tables this run does not write (``lesions_mean.tsv`` without
    ``with_mean``, the trust tables without trust) go too. Files of other names are kept.
    """
    earlier = {path.stem for path in (out / "status").glob("*.json")}
    with suppress(StateFileError, FileNotFoundError):  # a corrupt manifest names no subjects
        listed = read_state_file(out / "cohort.json").get("subjects")
        earlier |= {str(s) for s in listed} if isinstance(listed, list) else set()
    for subject_id in sorted(earlier - {s.subject_id for s in found}):
        if subject_id in {"", ".", ".."} or Path(subject_id).name != subject_id:
            continue
        remove_run(out / subject_id / "mean")
        remove_run(out / subject_id)
        _status_path(out, subject_id).unlink(missing_ok=True)
        tn_pool_path(out / "tn_pools", subject_id).unlink(missing_ok=True)
    unwritten = ([] if options.with_mean else ["lesions_mean"]) + (
        [] if trust else list(COHORT_TRUST_TABLES)
    )
    for name in unwritten:
        (out / f"{name}.tsv").unlink(missing_ok=True)


def _held_now(out: Path, subject_id: str) -> bool:
    """Whether another live worker holds the subject at this moment."""
    try:
        with hold_lock(_subject_lock(out, subject_id), what=f"{out}: subject {subject_id}"):
            return False
    except OutputLockedError:
        return True


def _final_states(
    out: Path, found: Sequence[SubjectFiles], key: str, held: Sequence[str]
) -> tuple[list[str], dict[str, str], list[str]]:
    """Done, failed and pending subjects as their status records say now (any worker's).

    A subject another worker held is pending while it still holds it (its record may be an
    earlier run's).
    """
    done, failed, pending = [], {}, []
    for subject in found:
        if subject.subject_id in held and _held_now(out, subject.subject_id):
            pending.append(subject.subject_id)
            continue
        status = _read_status(out, subject.subject_id, key) or {}
        if status.get("state") == "done":
            done.append(subject.subject_id)
        elif status.get("state") == "failed":
            failed[subject.subject_id] = str(status.get("error", "failed"))
        else:
            pending.append(subject.subject_id)
    return done, failed, pending


def _write_tables(
    out: Path, done: list[str], failed: dict[str, str], with_mean: bool, trust: bool
) -> pd.DataFrame:
    """Gather the finished subjects' tables into ``lesions.tsv`` (and the mean one)."""
    table = _gather(out, done)
    write_text_unless_same(out / "lesions.tsv", _tsv(table))
    for name in COHORT_TRUST_TABLES if trust else ():
        write_text_unless_same(out / f"{name}.tsv", _tsv(_gather(out, done, name=name)))
    if with_mean:
        write_text_unless_same(out / "lesions_mean.tsv", _tsv(_gather(out, done, "mean")))
    write_json_unless_same(out / "failures.json", {"failed": failed, "n_failed": len(failed)})
    return table


def _tsv(table: pd.DataFrame) -> str:
    return table.to_csv(sep="\t", index=False, na_rep="n/a")


def _lost_by_ray(
    subject: SubjectFiles, reason: str, out: Path, key: str, since: float
) -> dict[str, Any]:
    """The record of a subject whose Ray task was lost: failed with ``reason`` (written, so the
    table and a rerun see it), or done when it finished in this run before its answer was lost."""
    finished = _read_status(out, subject.subject_id, key) or {}
    if finished.get("state") == "done" and float(finished.get("finished_at", 0.0)) >= since:
        return finished
    status = {
        "cohort_key": key,
        "subject": subject.subject_id,
        "state": "failed",
        "error": reason,
        "finished_at": time.time(),
    }
    atomic_write_json(_status_path(out, subject.subject_id), status, overwrite=True)
    return status


def _run_ray(
    todo: Sequence[SubjectFiles],
    explain_one: Callable[[SubjectFiles, nn.Module], dict[str, Any]],
    model: str,
    address: str | None,
    on_done: Callable[[int], None],
    trust_model_code: bool,
    lost: Callable[[SubjectFiles, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One Ray task per subject; a task Ray loses (its worker or a Ray process died) gives the
    subject's ``lost`` record, so the cohort goes on and a rerun explains the subject again."""
    try:
        import ray
    except ImportError as error:
        raise ConfigurationError("executor 'ray' needs Ray: pip install 'instasal[ray]'") from error
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = 1 if torch.cuda.is_available() else 0

        @ray.remote(num_gpus=gpus)
        def task(subject: SubjectFiles) -> dict[str, Any]:
            return explain_one(subject, load_model(model, trust_code=trust_model_code))

        subjects = {task.remote(subject): subject for subject in todo}
        pending = list(subjects)
        statuses: list[dict[str, Any]] = []
        while pending:
            (ready,), pending = ray.wait(pending, num_returns=1)
            try:
                statuses.append(ray.get(ready))
            except ray.exceptions.RayTaskError:
                raise  # the task's own error (a full disk) stops the cohort, as it does here
            except ray.exceptions.RayError as error:
                reason = (
                    f"Ray lost the task ({type(error).__name__}: {one_line(error)}); "
                    "run the cohort again to explain the subject"
                )
                statuses.append(lost(subjects[ready], reason))
            on_done(len(statuses))
        return statuses
    finally:
        if started_here:
            ray.shutdown()
