"""The report sections that need the run's model: activation heatmaps, heatmap contrast and decoded tokens.

Part of `kneuron.engine.pipelines.report.pipeline` (``build_report`` creates the three sections and `model_sections`
fills
them). Heatmaps and contrast also need the run's dataset and inpainter. The chance level of the contrast and
hit-rate tables is the run's stored ``random`` baseline set of each concept; without one the text says so.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kneuron.engine.errors import KneuronError
from kneuron.engine.pipelines.report.config import ReportConfig
from kneuron.engine.pipelines.run import RunReader
from kneuron.engine.pipelines.sets import StoredSet
from kneuron.engine.reporting.document import Figure, Section, Table, Text, fmt, slug

RANDOM_METHOD = "random"
Sets = dict[tuple[str, str], StoredSet]


def model_sections(run: RunReader, config: ReportConfig, sets: Sets, out_dir: Path, summary: dict[str, Any],
                   dataset: Any, dataset_error: str | None, heat: Section, contrast: Section,
                   decoding: Section) -> None:
    """Fill the heatmaps, contrast and decoding sections (or say in each why it is missing)."""
    sections = [heat, contrast, decoding]
    if not config.with_model:
        for section in sections:
            section.blocks.append(Text("Skipped: the report was written without the model (--no-model)."))
        return
    concepts = sorted({c for (c, m), s in sets.items() if m == config.method and s.neurons})
    if config.max_concepts is not None:
        concepts = concepts[:config.max_concepts]
    if not concepts:
        for section in sections:
            section.blocks.append(Text(f"No non-empty {config.method} neuron set in this run."))
        return
    try:
        adapter = run.load_model(config.model, device=config.device)
    except KneuronError as exc:
        for section in sections:
            section.blocks.append(Text(f"Skipped: the model could not be loaded ({exc})."))
        return
    for note in run.notes:
        heat.blocks.append(Text(f"Note: {note}."))
    decoding_blocks(adapter, sets, concepts, config, decoding, summary)
    try:
        if dataset is None:
            raise KneuronError(dataset_error or "no dataset")
        inpainter, margin = run.inpainter(config.device)
    except KneuronError as exc:
        for section in (heat, contrast):
            section.blocks.append(Text(f"Skipped: the run's dataset or inpainter is not available ({exc})."))
        return
    images = run.images()
    heatmap_blocks(run, adapter, dataset, inpainter, margin, sets, concepts, images, config, out_dir, heat)
    contrast_blocks(adapter, dataset, sets, concepts, images, config, contrast, summary)


def methods_of(sets: Sets, concepts: list[str], method: str) -> list[str]:
    """The methods with a non-empty set for one of ``concepts``: ``method`` first, then by name."""
    return sorted({m for (c, m), s in sets.items() if c in concepts and s.neurons}, key=lambda m: (m != method, m))


def chance_note(sets: Sets, concepts: list[str]) -> str:
    """What the tables say about their chance level: the stored random sets, or that the run has none."""
    missing = [c for c in concepts if not (sets.get((c, RANDOM_METHOD)) and sets[(c, RANDOM_METHOD)].neurons)]
    if len(missing) == len(concepts):
        return (f" This run has no stored '{RANDOM_METHOD}' baseline set, so no chance level is shown (`kneuron "
                "suppress` stores one per concept).")
    text = (f" '{RANDOM_METHOD}' is the run's stored random baseline set of each concept (stored by `kneuron "
            "suppress`): the chance level.")
    if missing:
        text += f" No stored '{RANDOM_METHOD}' set for: {', '.join(missing)}."
    return text


def heatmap_blocks(run: RunReader, adapter: Any, dataset: Any, inpainter: Any, margin: float, sets: Sets,
                   concepts: list[str], images: dict[str, list[int]], config: ReportConfig, out_dir: Path,
                   section: Section) -> None:
    from kneuron.engine.signals.heatmap import heatmap_figure

    section.blocks.append(Text(
        f"Mean activation of each concept's {config.method} neurons at the image tokens, drawn on the image "
        "(token -> patch map, bilinear upsampling, jet colormap at alpha 0.5), for the original image and the "
        "image with the concept inpainted away, on one common scale: the colour bar on the right runs from the "
        "pair's lowest heat (0) to its highest (1). Evaluation images (not used for selection)."))
    for concept in concepts:
        neurons = sets[(concept, config.method)].pairs
        for image_id in images.get(concept, [])[:config.heatmap_images]:
            try:
                original, inpainted = run.pair(dataset, concept, image_id, inpainter, margin)
            except KneuronError as exc:
                section.blocks.append(Text(f"{concept}, image {image_id}: skipped ({exc})."))
                continue
            figure = heatmap_figure(adapter, original, inpainted, neurons, n_probes=config.n_probes,
                                    value=config.heat_value)
            path = out_dir / "figures" / f"heatmap-{slug(concept)}-{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.save(path)
            section.blocks.append(Figure(path, f"{concept}: image {image_id}, {len(neurons)} neurons "
                                               f"({config.method}); left original, right inpainted"))


def contrast_blocks(adapter: Any, dataset: Any, sets: Sets, concepts: list[str], images: dict[str, list[int]],
                    config: ReportConfig, section: Section, summary: dict[str, Any]) -> None:
    from kneuron.engine.eval.rates import concept_intervals, paired_differences
    from kneuron.engine.signals.heatmap_contrast import contrast_share, object_contrasts

    methods = methods_of(sets, concepts, config.method)
    section.blocks.append(Text(
        f"Heatmap lift (`kneuron.engine.signals.heatmap.object_lift`, heat = {config.heat_value} of the activations) "
        "over up to "
        f"{config.contrast_images} evaluation images per concept: the relative contrast (mean inside the concept's "
        "mask minus mean outside, over the image mean) of the set's raw heat, minus that of the token -> patch "
        "map's own mass. 0 = the set's heat sits on the object no more than any set firing equally at every "
        "token would (the map alone concentrates on objects); > 0 = the set fires more at the object's tokens. "
        "Cells: mean lift over the images [95% interval, images resampled], n images. All sets of a concept are "
        "drawn on the same images, so the differences against random are paired." + chance_note(sets, concepts)))
    rows = []
    lifts: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    shares: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        ids = images.get(concept, [])[:config.contrast_images]
        named = {m: sets[(concept, m)].pairs for m in methods if (concept, m) in sets and sets[(concept, m)].neurons}
        if not ids or not named:
            continue
        result = object_contrasts(adapter, dataset, ids, concept, named, n_probes=config.n_probes,
                                  value=config.heat_value)
        cells: list[Any] = [concept, len(ids)]
        per_concept = concept_intervals({m: {concept: [r.lift for r in result[m][1]]} for m in result})
        for method in methods:
            if method in result:
                per_image = result[method][1]
                lifts[method][concept] = [r.lift for r in per_image]
                one = per_concept[method]
                shares.setdefault(concept, {})[method] = {"lift": one, "brighter_inside_share":
                                                          contrast_share(per_image)}
                cells.append(f"{fmt(one['estimate'])} {ci(one)} n={one['n']}")
            else:
                cells.append("—")
        rows.append(cells)
    overall = concept_intervals(lifts)
    rows.append(["all concepts (mean over concepts)", sum(r[1] for r in rows)]
                + [f"{fmt(overall[m]['estimate'])} {ci(overall[m])} ({ci(overall[m], 'concepts')}) n={overall[m]['n']}"
                   for m in methods])
    section.blocks.append(Table(["concept", "images"] + methods, rows,
                                caption="heatmap lift: mean [95% CI images] (all concepts: + [95% CI concepts]) n"))
    paired: dict[str, Any] = {}
    if RANDOM_METHOD in lifts and any(lifts[RANDOM_METHOD].values()):
        paired = paired_differences(lifts, RANDOM_METHOD)
        section.blocks.append(Table(
            ["method", "lift minus random", "95% CI (images)", "95% CI (concepts)", "p", "Holm p", "n"],
            [[m, fmt(r["estimate"]), ci(r), ci(r, "concepts"), fmt(r["p_value"]), fmt(r["p_holm"]), r["n"]]
             for m, r in paired.items()],
            caption="paired on the same images (sign-flip p-value, Holm-adjusted across methods)"))
    summary["heatmap_contrast"] = {"per_concept": shares, "pooled": overall, "vs_random": paired,
                                   "method": config.method, "value": config.heat_value}


def ci(row: dict[str, Any], prefix: str = "images") -> str:
    low, high = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "[—]"
    return f"[{fmt(low)}, {fmt(high)}]"


def decoding_blocks(adapter: Any, sets: Sets, concepts: list[str], config: ReportConfig, section: Section,
                    summary: dict[str, Any]) -> None:
    from kneuron.engine.eval.rates import pooled_interval
    from kneuron.engine.signals.decode import concept_words, decode_neurons, excluded_token_ids, neuron_hits

    methods = methods_of(sets, concepts, config.method)
    section.blocks.append(Text(
        f"Each neuron's output weight W_down[:, i] projected through the unembedding W_U (top {config.k} tokens), "
        "without and with the final RMSNorm. Hit rate: share of a set's neurons whose top tokens contain a token "
        "that decodes to the concept word (its plural or first sub-token counts; special, unknown and padding "
        "tokens never count). Pooled rows: hits / neurons over all concepts [95% interval: neurons resampled "
        "within concepts], n neurons." + chance_note(sets, concepts)))
    hit_rows = []
    hits: dict[str, dict[str, Any]] = {}
    excluded = excluded_token_ids(adapter.tokenizer)
    per_neuron: dict[str, dict[str, dict[str, list[float]]]] = {m: {"plain": {}, "final_norm": {}} for m in methods}
    for concept in concepts:
        words = concept_words(adapter, concept)
        cells: list[Any] = [concept]
        for method in methods:
            stored = sets.get((concept, method))
            if stored is None or not stored.neurons:
                cells.append("—")
                continue
            pairs = stored.pairs
            plain = [float(h) for h in neuron_hits(decode_neurons(adapter, pairs, k=config.k), words, excluded)]
            normed = [float(h) for h in neuron_hits(decode_neurons(adapter, pairs, k=config.k, final_norm=True),
                                                    words, excluded)]
            per_neuron[method]["plain"][concept] = plain
            per_neuron[method]["final_norm"][concept] = normed
            hits.setdefault(concept, {})[method] = {"plain": sum(plain) / len(plain),
                                                    "final_norm": sum(normed) / len(normed), "neurons": len(plain)}
            cells.append(f"{fmt(sum(plain) / len(plain))} / {fmt(sum(normed) / len(normed))} (n={len(plain)})")
        hit_rows.append(cells)
    pooled: dict[str, dict[str, Any]] = {}
    for m in methods:
        if not per_neuron[m]["plain"]:
            continue
        plain_ci, norm_ci = pooled_interval(per_neuron[m]["plain"]), pooled_interval(per_neuron[m]["final_norm"])
        pooled[m] = {"plain": plain_ci["estimate"], "final_norm": norm_ci["estimate"], "neurons": plain_ci["n"],
                     "plain_interval": plain_ci, "final_norm_interval": norm_ci}
    hit_rows.append(["all concepts (pooled neurons)"] + [
        f"{fmt(pooled[m]['plain'])} {ci(pooled[m]['plain_interval'])} / {fmt(pooled[m]['final_norm'])} "
        f"{ci(pooled[m]['final_norm_interval'])} (n={pooled[m]['neurons']})" if m in pooled else "—"
        for m in methods])
    section.blocks.append(Table(["concept"] + [f"{m} (plain / norm)" for m in methods], hit_rows,
                                caption="concept-word hit rate per set"))
    for concept in concepts:
        members = sets[(concept, config.method)].neurons[:config.decode_top]
        pairs = [(layer, unit) for layer, unit, _ in members]
        order = {pair: index for index, pair in enumerate(pairs)}
        plain_decoded = sorted(decode_neurons(adapter, pairs, k=config.k), key=lambda d: order[(d.layer, d.unit)])
        normed_decoded = {(d.layer, d.unit): d for d in decode_neurons(adapter, pairs, k=config.k, final_norm=True)}
        scores = {(layer, unit): score for layer, unit, score in members}
        rows = [[f"{d.layer}:{d.unit}", fmt(scores[(d.layer, d.unit)]), " ".join(repr(t) for t in d.tokens),
                 " ".join(repr(t) for t in normed_decoded[(d.layer, d.unit)].tokens)] for d in plain_decoded]
        section.blocks.append(Table(["neuron", "score", "top tokens", "top tokens (final norm)"], rows,
                                    caption=f"{concept}: strongest {len(rows)} {config.method} neurons"))
    summary["decoding_hit_rate"] = {"per_concept": hits, "pooled": pooled}
