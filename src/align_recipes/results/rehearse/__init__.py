"""`align-recipes rehearse RECIPE`: the recipe's whole path at its real shape, on a CPU, in a minute or two of CPU time.

People rent a GPU and find, after the downloads, that the run dies at step 1 or at the first evaluation.
A rehearsal runs the same path first, through `run.train` itself, with:
  model      the real architecture (shapes.py) cut to 2 layers, random weights, the real vocabulary, and
             the recipe's adapter and quantization (QLoRA's bitsandbytes 4-bit runs on CPU too)
  tokenizer  the recipe's own when it can be read without downloading weights, else a stand-in (tokenizer.py)
  data       the first rows of the recipe's data when reachable, else a synthetic sample in its layout
             (sample_data.py); a rehearsal always evaluates once, on the recipe's eval data or rows like it
  run        2 optimizer steps with an evaluation after the first, a checkpoint, the final save, a reload
             of the saved output (as `chat` loads it) and the report
and prints one screen: each stage ok or failed (with train's own clean errors), the peak memory measured,
and the full model's estimated peak GPU memory under the profile (memory.py) against its budget.
Lengths, micro-batch and generation budgets are cut (`REHEARSAL_CAPS`) so that a step takes seconds.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_recipes.errors import RecipeError, RecipeErrors

STAGES = ("recipe", "model", "tokenizer", "data", "plan", "train", "evaluate", "save", "reload", "report")
STEPS = 2
# Train keys cut for the rehearsal (only those the algorithm's config has); lengths are upper bounds.
REHEARSAL_CAPS = {
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "max_length": 96,
    "max_prompt_length": 32,
    "max_completion_length": 8,
    "max_new_tokens": 8,
    "num_generations": 2,
    "num_generations_eval": 2,
    "num_ppo_epochs": 1,
}
REHEARSAL_SETS = {
    "max_steps": STEPS,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "eval_steps": 1,
    "save_strategy": "steps",
    "save_steps": STEPS,
    "dataloader_num_workers": 0,
    "steps_per_generation": None,
    "generation_batch_size": None,
}
GPU_PROFILES = ("t4", "l4", "a100", "h100")


@dataclass
class Stage:
    name: str
    ok: bool | None = None  # None: not reached
    detail: str = ""
    seconds: float | None = None


@dataclass
class Rehearsal:
    recipe: Path
    algorithm: str = "?"
    adapter: str = "?"
    run_profile: str = "cpu"
    target_profile: str = "cpu"
    stages: dict[str, Stage] = field(default_factory=lambda: {n: Stage(n) for n in STAGES})
    estimates: list[tuple[str, Any]] = field(default_factory=list)  # (profile, Estimate or refusal text)
    seconds: float = 0.0
    peak_rss_gb: float = 0.0
    workdir: Path | None = None
    steps: int = STEPS

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages.values())

    @property
    def estimate_refused(self) -> bool:
        """The target is a GPU profile and the full model will not fit there."""
        return any(
            name == self.target_profile and (isinstance(e, str) or not e.fits) for name, e in self.estimates
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.ok and not self.estimate_refused else 2


class _StageFailed(Exception):
    pass


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def _online() -> bool:
    from align_recipes.results.rehearse.plan import offline

    return not offline()


def rehearse(
    recipe: str | Path,
    overrides: list[str] = (),
    profile: str | None = None,
    workdir: str | Path | None = None,
    caps: dict | None = None,
    steps: int = STEPS,
) -> Rehearsal:
    """Rehearse one recipe; never raises for what the run hits (each stage records it). `caps` replaces some of
    REHEARSAL_CAPS and `steps` the number of optimizer steps (the test suite uses shorter runs)."""
    from align_recipes.results.rehearse import plan as planning

    started = time.time()
    result = Rehearsal(recipe=Path(recipe))
    online = _online()
    stage = result.stages

    def run_stage(name: str, action):
        begin = time.time()
        try:
            value = action()
        except (
            Exception
        ) as exc:  # a rehearsal reports what a run would hit, with the clean errors train gives
            stage[name].ok, stage[name].detail = False, _describe(exc, result.workdir)
            stage[name].seconds = time.time() - begin
            raise _StageFailed(name) from None
        stage[name].ok, stage[name].seconds = True, time.time() - begin
        return value

    try:
        draft = run_stage("recipe", lambda: planning.Draft.read(Path(recipe), list(overrides), profile))
        draft.limits = {**REHEARSAL_CAPS, **(caps or {})}
        draft.steps = result.steps = steps
        stage["recipe"].detail = draft.describe()
        result.algorithm, result.target_profile = draft.algorithm.name, draft.target_profile
        result.adapter = draft.adapter
        result.workdir = (
            Path(workdir) if workdir else Path("outputs") / "rehearse" / draft.family / draft.recipe.stem
        )
        if result.workdir.exists():
            shutil.rmtree(result.workdir)
        result.workdir.mkdir(parents=True)
        arch = run_stage("model", lambda: draft.architecture(online))
        stage["model"].detail = planning.describe_architecture(arch)
        tokenizer_dir, stage["tokenizer"].detail = run_stage(
            "tokenizer", lambda: draft.tokenizer(arch, online)
        )
        model_dir = run_stage(
            "model", lambda: draft.build_model(arch, tokenizer_dir, stage["tokenizer"].detail)
        )
        stage["model"].detail += draft.reward_note
        stage["data"].detail = run_stage("data", lambda: draft.write_data(result.workdir, online))
        run_plan = run_stage("plan", lambda: draft.run_plan(model_dir, result.workdir))
        result.estimates = draft.estimates(arch)
        result.run_profile = run_plan.profile.name
        stage["plan"].detail = draft.plan_note(run_plan)
        _train(run_plan, result)
        _reload(run_plan, result)
    except _StageFailed:
        pass
    result.seconds = time.time() - started
    result.peak_rss_gb = _peak_rss_gb()
    return result


def rehearse_pipeline(
    path: str | Path, overrides: list[str] = (), profile: str | None = None, workdir: str | Path | None = None
) -> list[Rehearsal]:
    """Rehearse each stage of a pipeline file with its overrides; an override naming an earlier stage's output
    (`{sft}`) is left out, as that output is stood in for (the stage's recipe names what it is trained from)."""
    path = Path(path)
    root = Path(workdir) if workdir else Path("outputs") / "rehearse" / path.resolve().parent.name / path.stem
    return [
        rehearse(recipe, stage_overrides, profile, root / name)
        for name, recipe, stage_overrides in pipeline_stages(path, overrides)
    ]


def pipeline_stages(path: Path, overrides: list[str] = ()) -> list[tuple[str, Path, list[str]]]:
    """(name, recipe, overrides) per stage: the stage's own overrides without those naming an earlier stage's
    output, then the command line's (`KEY=VALUE` for all, `STAGE:KEY=VALUE` for one)."""
    from align_recipes.plan.yamlio import load_yaml
    from align_recipes.results.pipeline import override_text, split_overrides

    stages = [s for s in (load_yaml(path) or {}).get("stages") or [] if isinstance(s, dict)]
    common, per_stage = split_overrides(list(overrides), [str(s.get("name")) for s in stages])
    found = []
    for stage in stages:
        name = str(stage.get("name"))
        own = [
            f"{key}={override_text(value)}"
            for key, value in (stage.get("overrides") or {}).items()
            if "{" not in str(value)
        ]
        found.append(
            (name, path.parent / str(stage.get("recipe")), [*own, *common, *per_stage.get(name, [])])
        )
    return found


def _train(plan, result: Rehearsal) -> None:
    """run.train with its console output kept in run.log; stages read from what the run left behind."""
    from align_recipes.results.report import try_write_report
    from align_recipes.run import train
    from align_recipes.run.rundir import RunDir

    out = plan.output_dir
    log = result.workdir / "run.log"
    begin, error = time.time(), None
    with (
        open(log, "w", encoding="utf-8") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        try:
            train(plan, overwrite=True, command=["align-recipes", "rehearse", str(result.recipe)])
            try_write_report(out)
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C included: the screen says where it stopped
            error = exc
            traceback.print_exc(file=handle)
    seconds = time.time() - begin
    records = RunDir(out).metrics()
    done = max((r.get("step", 0) for r in records if "loss" in r or "reward" in r), default=0)
    steps = result.steps
    evals = [
        r
        for r in records
        if any(k.startswith("eval_") and not k.endswith(("runtime", "per_second")) for k in r)
    ]
    saved = any((out / f).is_file() for f in ("adapter_config.json", "model.safetensors", "config.json"))
    checkpoint = (out / f"checkpoint-{steps}").is_dir()
    evidence = {
        "train": (done >= steps, f"{done} of {steps} optimizer steps{_loss_text(records)}"),
        "evaluate": (bool(evals), _eval_text(evals, steps)),
        "save": (saved and checkpoint, f"checkpoint-{steps} and the final model in {out}"),
        "report": ((out / "report.md").is_file(), f"{out / 'report.md'}"),
    }
    failed = False
    for name, (ok, text) in evidence.items():
        if name == "report":
            continue
        if ok and not failed:
            result.stages[name].ok, result.stages[name].detail = True, text
        elif not failed:
            failed = True
            result.stages[name].ok = False
            result.stages[name].detail = _describe(error, result.workdir) if error else f"not done ({text})"
    result.stages["train"].seconds = seconds
    if failed or error is not None:
        if not failed:
            result.stages["report"].ok = False
            result.stages["report"].detail = _describe(error, result.workdir)
        raise _StageFailed("train")
    ok, text = evidence["report"]
    result.stages["report"].ok, result.stages["report"].detail = ok, text


def _reload(plan, result: Rehearsal) -> None:
    """Load the saved output as `chat`/`eval` do, and use it once."""
    begin = time.time()
    try:
        import torch

        from align_recipes.results.chat import load_run, reply

        model, tokenizer, info = load_run(plan.output_dir, device="cpu")
        if info.head == "reward":
            batch = tokenizer(["Is this helpful? Yes."], return_tensors="pt")
            with torch.no_grad():
                score = model(**batch).logits[0, 0].item()
            text = f"reward model scores a text: {score:+.3f}"
        else:
            answer = reply(
                model, tokenizer, [{"role": "user", "content": "Say hello."}], max_new_tokens=4, temperature=0
            )
            text = f"generated a reply ({len(answer)} characters)"
        result.stages["reload"].ok = True
        result.stages["reload"].detail = f"{'adapter on its base' if info.adapter else 'full model'}; {text}"
    except Exception as exc:
        result.stages["reload"].ok, result.stages["reload"].detail = False, _describe(exc, result.workdir)
    result.stages["reload"].seconds = time.time() - begin
    # Keep the report stage after reload on the screen, as in STAGES order.


def _loss_text(records: list[dict]) -> str:
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    return f", loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""


def _eval_text(evals: list[dict], steps: int) -> str:
    if not evals:
        return "no evaluation ran"
    keys = [k for k in evals[0] if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))]
    shown = ", ".join(f"{k} {evals[0][k]:.3f}" for k in keys[:2] if isinstance(evals[0][k], (int, float)))
    after = ", training continued after the first" if steps > 1 else ""
    return f"{len(evals)} evaluation(s){after} ({shown})"


def _describe(exc: BaseException | None, workdir: Path | None) -> str:
    """train's own clean message for recipe errors; one line and where, for anything else (a defect)."""
    if exc is None:
        return "failed"
    if isinstance(exc, (RecipeError, RecipeErrors)):
        from align_recipes.redaction import redact

        return redact(exc.render())
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "align_recipes" in f.filename] or frames
    where = f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno})" if ours else ""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
        where += f"; traceback in {workdir / 'traceback.txt'}"
    return f"{type(exc).__name__}: {text}{where}"


def render(result: Rehearsal) -> str:
    """The one screen."""
    width = 76
    lines = [
        "─" * width,
        f"align-recipes rehearse · {result.algorithm} · {result.recipe} · adapter {result.adapter}",
        f"  run on {'CPU' if result.run_profile == 'cpu' else result.run_profile} (profile {result.run_profile}),"
        f" 2 layers, random weights, {result.steps} steps; output in {result.workdir}",
    ]
    for stage in result.stages.values():
        mark = {True: "ok", False: "FAILED", None: "·"}[stage.ok]
        detail = stage.detail if stage.ok is not None else "not reached"
        first, *rest = (detail or "").splitlines() or [""]
        took = f" ({stage.seconds:.1f}s)" if stage.seconds is not None and stage.ok is not None else ""
        lines.append(f"  {stage.name:<10}{mark:<7}{first}{took}")
        lines += [f"  {'':<17}{line}" for line in rest]
    lines.append(
        f"  measured   {result.seconds:.1f} s wall, peak RSS {result.peak_rss_gb:.2f} GB (this process)"
    )
    if result.estimates:
        lines.append("  GPU memory of the full model, estimated peak per process (GB):")
        notes = []
        for name, estimate in result.estimates:
            if isinstance(estimate, str):
                lines.append(f"    {name:<6}{estimate}")
                continue
            lines.append(f"    {name:<6}{estimate.line()} ({estimate.breakdown()})")
            notes += [n for n in estimate.notes if n not in notes]
        lines.append(f"    {'':<6}{'; '.join(notes)}")
    verdict = (
        "ok: the recipe ran end to end at its real shape"
        if result.ok
        else "FAILED: fix the stage marked FAILED before renting a GPU"
    )
    if result.ok and result.estimate_refused:
        verdict = f"FAILED: the full model will not fit profile {result.target_profile} (see the estimate)"
    lines += [f"  {verdict}", "─" * width]
    return "\n".join(lines)


__all__ = [
    "rehearse",
    "rehearse_pipeline",
    "render",
    "Rehearsal",
    "REHEARSAL_CAPS",
    "REHEARSAL_SETS",
    "STEPS",
]
