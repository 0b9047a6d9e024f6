"""`kneuron decode`: neurons projected through the unembedding, their top tokens printed as a table."""
from __future__ import annotations

import click

from kneuron.cli.options import DEVICE_HELP, neuron_set_options, require_neuron_choice
from kneuron.engine.models.families import model_help


@click.command("decode", context_settings={"help_option_names": ["-h", "--help"]})
@neuron_set_options(concept_help="Decode the current neuron set of this concept.",
                    set_help="Decode the neuron set with this id (`kneuron ls sets`).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Tokens per neuron.")
@click.option("--final-norm/--no-final-norm", default=False, show_default=True,
              help="Pass each output weight through the final RMSNorm before the unembedding.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Neurons of a set shown (strongest first).")
@click.option("--model", metavar="NAME|ID|PATH", help=model_help("the run's model"))
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def command(warehouse_path: str | None, run_id: str | None, concept: str | None, method: str, set_id: str | None,
            neurons: tuple[str, ...], k: int, final_norm: bool, top: int, model: str | None, device: str) -> None:
    """Decode neurons: each neuron's output weight W_down[:, i] times the unembedding W_U, top-k tokens.

    Neurons come from --neuron L:U, --set SET_ID, or the current --method set of --concept in the run.
    With a concept, the share of neurons whose top tokens contain the concept word is printed too.
    """
    import pyarrow as pa

    from kneuron.cli.render import render_table
    from kneuron.engine.models import load_model
    from kneuron.engine.signals.decode import concept_words, decode_neurons, excluded_token_ids, neuron_hits
    from kneuron.engine.signals.neurons import parse_neuron

    require_neuron_choice(neurons, set_id, concept)
    scores: dict[tuple[int, int], float | None] = {}
    what = ""
    if neurons and model:
        pairs = [parse_neuron(text) for text in neurons]
        adapter = load_model(model, device=device)
        what = f"{len(pairs)} neuron(s)"
    else:
        from kneuron.engine.pipelines.run import RunReader

        with RunReader(warehouse_path, run_id) as run:
            if neurons:
                pairs = [parse_neuron(text) for text in neurons]
                what = f"{len(pairs)} neuron(s)"
            else:
                concept, members, what = run.chosen_set(concept, method, set_id)
                pairs = [(layer, unit) for layer, unit, _ in members]
                scores = {(layer, unit): score for layer, unit, score in members}
                what += f", run {run.run_id}"
            adapter = run.load_model(model, device=device)
            for note in run.notes:
                click.echo(f"note: {note}", err=True)
    total = len(pairs)
    decoded_all = decode_neurons(adapter, pairs, k=k, final_norm=final_norm)
    order = {pair: index for index, pair in enumerate(pairs)}
    shown = sorted(decoded_all, key=lambda d: order[(d.layer, d.unit)])[:top]
    table = pa.table({
        "neuron": [f"{d.layer}:{d.unit}" for d in shown],
        "score": pa.array([scores.get((d.layer, d.unit)) for d in shown], type=pa.float64()),
        "top tokens": [" ".join(repr(t) for t in d.tokens) for d in shown],
    })
    norm = "with the final norm" if final_norm else "without the final norm"
    click.echo(f"{what}: top {k} tokens {norm}" + (f" (showing {len(shown)} of {total})" if total > len(shown) else ""))
    click.echo(render_table(table, max_rows=len(shown) + 1), nl=False)
    if concept:
        hits = neuron_hits(decoded_all, concept_words(adapter, concept), excluded_token_ids(adapter.tokenizer))
        rate = sum(hits) / total if total else float("nan")
        click.echo(f"concept-word hit rate: {rate:.3f} ({concept!r} in the top {k} tokens of "
                   f"{sum(hits)} of n = {total} neurons; special and unknown tokens never count)")
