"""`kneuron select`: two-stage neuron selection in DuckDB; writes ``neuron_sets`` and prints the sizes."""
from __future__ import annotations

from typing import Any

import click

from kneuron.cli.options import warehouse_option


@click.command("select", context_settings={"help_option_names": ["-h", "--help"]})
@warehouse_option
@click.option("--run", "run_id", metavar="RUN_ID", help="Run to select from [default: the latest run].")
@click.option("--concept", "concepts", multiple=True, metavar="C", help="Concept (repeatable) [default: all].")
@click.option("--stage1", default="auto", show_default=True, metavar="auto|abs:V|q:Q|top:N",
              help="Stage-1 (activation difference) threshold: knee rule, absolute value, per-concept quantile "
                   "or top-N budget.")
@click.option("--stage2", default="auto", show_default=True, metavar="auto|abs:V|q:Q|top:N",
              help="Stage-2 (GradCAM g_c) threshold, over the candidates C_k by default.")
@click.option("--aggregate", type=click.Choice(["mean", "share"]), default="mean", show_default=True,
              help="Across images: mean score > t, or share of images with value > t >= --min-share.")
@click.option("--min-share", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Share of images a neuron must pass in (with --aggregate share).")
@click.option("--reduce", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Per image, over positions: d_max/g_max or d_mean/g_mean.")
@click.option("--stage2-pool", type=click.Choice(["candidates", "all"]), default="candidates", show_default=True,
              help="Neurons the stage-2 quantile/knee/budget is computed over.")
@click.option("--with-baselines/--no-baselines", default=True, show_default=True,
              help="Also write stage1_only and stage2_only sets of size |N_k|.")
@click.option("--specific", metavar="stage1|ratio:R|ratio1:R",
              help="Third filter (beyond the paper): also write two_stage_specific = N_k minus the neurons that "
                   "are not specific to k: stage1 = also a stage-1 candidate of another concept of the run; "
                   "ratio:R = mean g_c on k's images not above R x the largest on another concept's "
                   "(ratio1:R: the same with the activation difference). Identification images only.")
@click.option("--exclude-massive", type=click.FloatRange(min=0, min_open=True), metavar="K",
              help="Leave out the run's massive units (mean |activation| > K x the median unit on the "
                   "identification images; `kneuron sql -q massive_units`) from every method's pool.")
def command(warehouse_path: str | None, run_id: str | None, concepts: tuple[str, ...], stage1: str, stage2: str,
            aggregate: str, min_share: float, reduce: str, stage2_pool: str, with_baselines: bool,
            specific: str | None = None, exclude_massive: float | None = None) -> Any:
    """Select knowledge neurons (two-stage filtering) and store them as neuron_sets.

    Stage 1 keeps the neurons whose activation drops when the concept is inpainted away (C_k); stage 2 keeps
    those of C_k with a large GradCAM-style attribution (N_k). Thresholds: `auto` (knee of the sorted scores),
    `abs:V`, `q:Q` (per-concept quantile) or `top:N`. Sets already in the warehouse (same run, concept,
    method and parameters) are not written again, but become the current sets again (printed).
    """
    from kneuron.api_steps import select
    from kneuron.cli.render import render_table

    result = select(warehouse_path, run=run_id, concepts=concepts, stage1=stage1, stage2=stage2, aggregate=aggregate,
                    min_share=min_share, reduce=reduce, stage2_pool=stage2_pool, baselines=with_baselines,
                    specific=specific, exclude_massive=exclude_massive)
    n_concepts = len(set(result.selection.summary.column("concept").to_pylist()))
    click.echo(f"run {result.run_id}: {n_concepts} concept(s); wrote {len(result.written)} neuron set(s)"
               + (f", {len(result.present)} already stored" if result.present else "")
               + f" [stage1 {stage1}, stage2 {stage2}, aggregate {aggregate}, reduce {reduce}"
               + (f", specific {specific}" if specific else "")
               + (f", massive units excluded (k={exclude_massive:g})" if exclude_massive else "") + "]")
    click.echo(f"current sets now: {' '.join(result.current) if result.current else '(none: every set is empty)'}")
    click.echo(render_table(result.table, max_rows=10_000), nl=False)
    return result  # for `kneuron demo`, which evaluates exactly these sets
