"""`kneuron report`: the HTML + Markdown report of a warehouse run."""
from __future__ import annotations

import click

from kneuron.cli.options import DEVICE_HELP, deprecated_alias, warehouse_option
from kneuron.engine.models.families import model_help


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@warehouse_option
@click.option("--run", "run_id", metavar="RUN_ID", help="Run [default: the latest run].")
@click.option("-o", "--out", "out_dir", default="kneuron-report", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (report.html, report.md, summary.json, figures/).")
@click.option("--method", default="two_stage", show_default=True,
              help="Neuron-set method shown in heatmaps, plots and decoded tokens.")
@click.option("--set", "set_ids", multiple=True, metavar="SET_ID",
              help="A --method set to show instead of its concept's current one (repeatable, one per concept; "
                   "`kneuron ls sets` lists them) [default: the current sets].")
@click.option("--model", metavar="NAME|ID|PATH", help=model_help("the run's model"))
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--no-model", is_flag=True, help="Skip heatmaps, contrast and decoded tokens (no model needed).")
@click.option("--coco-root", "data_root", type=click.Path(file_okay=False),
              help="COCO-layout dataset folder for heatmaps [default: the run's].")
@deprecated_alias("--data-root", "data_root", "--coco-root", type=click.Path(file_okay=False))
@click.option("--split", help="Dataset split for heatmaps [default: the run's].")
@click.option("--images", "heatmap_images", type=click.IntRange(min=0), default=2, show_default=True,
              help="Heatmap figures per concept.")
@click.option("--contrast-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per concept in the heatmap contrast share.")
@click.option("--decode-top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Strongest neurons decoded per concept.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Tokens per decoded neuron.")
@click.option("--value", "heat_value", type=click.Choice(["magnitude", "signed"]), default="magnitude",
              show_default=True, help="Heat of a token: mean |activation| of the set's units, or the signed mean.")
@click.option("--max-concepts", type=click.IntRange(min=1), help="Concepts with heatmaps and decoding [default: all].")
def command(warehouse_path: str | None, run_id: str | None, out_dir: str, method: str, set_ids: tuple[str, ...],
            model: str | None, device: str, no_model: bool, data_root: str | None, split: str | None,
            heatmap_images: int, contrast_images: int, decode_top: int, k: int, heat_value: str,
            max_concepts: int | None) -> None:
    """Write one self-contained HTML page (and Markdown with PNGs beside it) about a run: configuration,
    selection summary, suppression results, plots, heatmaps, heatmap contrast and decoded tokens."""
    from kneuron.api_steps import report

    result = report(warehouse_path, out=out_dir, run=run_id, sets=set_ids, method=method, model=model, device=device,
                    with_model=not no_model, data_root=data_root, split=split, heatmap_images=heatmap_images,
                    contrast_images=contrast_images, decode_top=decode_top, k=k, max_concepts=max_concepts,
                    heat_value=heat_value)
    click.echo(f"report: {result.html}")
    click.echo(f"markdown: {result.markdown} (figures in {result.out_dir / 'figures'})")
    shown = ", ".join(f"{s['concept']} {s['set_id']}" for s in result.summary["sets"] if s["method"] == method)
    click.echo(f"{method} sets shown: {shown or 'none'}")
    pooled = result.summary.get("heatmap_contrast", {}).get("pooled", {})
    for name in (method, "random"):
        if name in pooled:
            values = pooled[name]
            click.echo(f"heatmap contrast ({name}, {values['n']} images, {values['n_concepts']} concepts): lift "
                       f"{values['estimate']:.3f} [95% CI {values['images_low']:.3f}, {values['images_high']:.3f}] "
                       "(0 = on the object no more than the token -> patch map puts any set)")
    if pooled and "random" not in pooled:
        click.echo("heatmap contrast: no stored random baseline set in this run, so no chance level "
                   "(`kneuron suppress` stores one)")
