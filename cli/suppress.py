"""`kneuron suppress`: suppression evaluation of the selected neuron sets against the baselines."""
from __future__ import annotations

from pathlib import Path

import click

from kneuron.cli.options import DEVICE_HELP, deprecated_alias, ray_options, warehouse_option


def _budget(value: str | None) -> str | int | None:
    from kneuron.engine.errors import KneuronError

    if value is None or value == "same_as:two_stage":
        return value
    try:
        number = int(value)
    except ValueError:
        raise KneuronError(f"--budget must be a whole number or same_as:two_stage, got {value!r}") from None
    if number < 0:
        raise KneuronError(f"--budget must be >= 0, got {number}")
    return number


def _write(path: str, text: str) -> None:
    from kneuron.engine.errors import KneuronError

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise KneuronError(f"cannot write {target}: {exc.strerror or exc}") from None


@click.command("suppress", context_settings={"help_option_names": ["-h", "--help"]})
@warehouse_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file: run, concepts, methods, budget, n_other, max_images, seed, [selection] thresholds, "
                   "[metrics], [baselines.<name>] options. Command-line options override it.")
@click.option("--run", "run_id", metavar="RUN_ID", help="Run to evaluate [default: the latest run].")
@click.option("--concept", "concepts", multiple=True, metavar="C",
              help="Concept (repeatable) [default: every concept with a two_stage set].")
@click.option("--method", "methods", multiple=True, metavar="M",
              help="two_stage, stage1_only, stage2_only, random, random_layer_matched, pan, dai (repeatable) "
                   "[default: these seven]; also two_stage_specific (the two-stage ranking within the "
                   "concept-specific candidates) and random_nonmassive (random, never a massive unit).")
@click.option("--set", "set_ids", multiple=True, metavar="SET_ID",
              help="two_stage neuron set to evaluate (repeatable; at most one per concept; the config key `sets`) "
                   "[default: each concept's current two_stage set].")
@click.option("--budget", metavar="N|same_as:two_stage", help="Baseline neuron budget [default: |N_k|].")
@click.option("--budgets", metavar="N,N,...",
              help="Budget curves: every method at each budget (e.g. 1,2,4,8,16,32; the config key `budgets`); "
                   "two_stage at n = the n best stage-2 candidates of C_k. Prints the curves and per method the "
                   "specificity area and the target drop while other damage stays <= 5%.")
@click.option("--images-per-concept", "max_images", type=click.IntRange(min=1), metavar="N",
              help="At most N target images per concept (the config key max_images) [default: all].")
@deprecated_alias("--max-images", "max_images", "--images-per-concept", type=click.IntRange(min=1))
@click.option("--fragility-images", type=click.IntRange(min=0), metavar="N",
              help="Also zero each unit of the evaluated sets alone on N identification images and count, per "
                   "method, the units that change most captions on their own (the config key fragility_images).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per captioning batch [default: 16].")
@click.option("--ablation", type=click.Choice(["zero", "mean", "resample"]),
              help="What a suppressed unit becomes: zero (the paper), mean (its mean over reference identification "
                   "images, per position kind: image / prompt / generated) or resample (a seeded donor image's "
                   "activation) [default: zero; the config key `ablation`]. Part of the evaluation id.")
@click.option("--reference-images", type=click.IntRange(min=1), metavar="N",
              help="Identification images of the mean / resample reference set [default: 16].")
@click.option("--rows-per-generate", type=click.IntRange(min=1), metavar="N",
              help="(set, image) rows captioned per generate; every method of a concept shares the generates "
                   "[default: 4 x batch size]. Captions do not depend on it.")
@click.option("--edited-model", type=click.Path(file_okay=False), metavar="DIR",
              help="A folder written by `kneuron edit`: score its plain captions as the method `edited` against "
                   "the run's model (with no --method, `edited` is the only method).")
@click.option("--device", metavar="DEVICE", help=DEVICE_HELP + " [default: auto]")
@click.option("--eval-id", help="Evaluation id [default: derived from the settings; a rerun resumes it].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write the full summary (per concept and averaged; every measure) as CSV.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="Write the results tables as Markdown.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress lines on stderr (at most one every 30 s while captioning).")
@ray_options("captioner", "local: caption in this process; ray: an actor pool of captioners on a Ray cluster (the "
             "plan, scores and writes stay here; the same tables).", "the cluster's CPUs / --workers, at most 1")
def command(warehouse_path: str | None, config_path: str | None, run_id: str | None, concepts: tuple[str, ...],
            methods: tuple[str, ...], set_ids: tuple[str, ...], budget: str | None, budgets: str | None,
            max_images: int | None, fragility_images: int | None,
            batch_size: int | None, ablation: str | None, reference_images: int | None,
            rows_per_generate: int | None, edited_model: str | None, device: str | None, eval_id: str | None,
            csv_path: str | None, markdown_path: str | None, progress: bool, engine: str, ray_address: str | None,
            workers: int, gpus_per_worker: float | None, cpus_per_worker: float | None) -> None:
    """Caption evaluation images with each neuron set suppressed and compare methods.

    For every concept k with a two_stage set N_k (its current set, or the one given by --set; the log names
    it) and every method (N_k itself or a baseline at the same budget), the target images (evaluation images
    of k) and as many other images (without k) are captioned with the set suppressed (--ablation: zeroed,
    mean or resampled). BLEU-4, ROUGE-L and
    BERTScore against the unmodified captions and the ground truth, the mention rate of k and the retention of
    the other objects' mentions are stored in the warehouse (captions, scores, evals) and printed as tables
    (averaged over concepts). Rerunning the same evaluation resumes it.
    """
    import dataclasses
    from typing import Any

    from kneuron.api_steps import suppress
    from kneuron.cli.render import render_csv
    from kneuron.engine.eval.budget import parse_budgets
    from kneuron.engine.eval.config import EDITED_METHOD, EvalConfig, load_config
    from kneuron.engine.eval.summary import markdown_report

    config = load_config(config_path) if config_path else EvalConfig()
    overrides: dict[str, Any] = {
        "run_id": run_id, "eval_id": eval_id, "budget": _budget(budget), "max_images": max_images,
        "batch_size": batch_size, "device": device, "concepts": tuple(dict.fromkeys(concepts)) or None,
        "methods": tuple(dict.fromkeys(methods)) or None, "sets": tuple(dict.fromkeys(set_ids)) or None,
        "budgets": None if budgets is None else parse_budgets(budgets), "fragility_images": fragility_images,
        "edited_model": edited_model, "ablation": ablation, "reference_images": reference_images,
        "rows_per_generate": rows_per_generate}
    if edited_model and not methods and "methods" not in _config_keys(config_path):
        overrides["methods"] = (EDITED_METHOD,)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    result = suppress(warehouse_path, config=config, progress=progress, engine=engine, ray_address=ray_address,
                      workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    ablation_note = "" if config.ablation == "zero" else f"; {config.ablation} ablation"
    title = (f"Suppression evaluation {result.eval_id} (run {result.run_id}; {len(result.concepts)} concept(s)"
             f"{ablation_note}; mean over concepts)")
    tables = result.tables()
    if result.fragility is not None:
        tables["fragile units in each method's sets (zeroed alone, each changes >= 50% of the identification "
               "captions checked)"] = result.fragility
    report = markdown_report(tables, title=title)
    what = (f"{len(result.methods) // len(result.budgets)} method(s) x {len(result.budgets)} budget(s)"
            if result.budgets else f"{len(result.methods)} method(s)")
    click.echo(f"evaluation {result.eval_id} of run {result.run_id}: {len(result.concepts)} concept(s) x {what}; "
               f"{result.jobs_run} job(s) run, {result.jobs_skipped} already stored")
    click.echo()
    click.echo(report, nl=False)
    if csv_path:
        _write(csv_path, render_csv(result.summary))
    if markdown_path:
        _write(markdown_path, report)


def _config_keys(config_path: str | None) -> set[str]:
    """The top-level keys a TOML config file sets (none without a file)."""
    if not config_path:
        return set()
    import tomllib

    try:
        with open(config_path, "rb") as handle:
            return set(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # load_config has already reported a bad file
