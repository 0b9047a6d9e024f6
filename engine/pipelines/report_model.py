"""The report sections that need the run's model: activation heatmaps, heatmap contrast and decoded tokens.

Part of `engine.pipelines.report` (``build_report`` creates the three sections and `model_sections` fills
them). Heatmaps and contrast also need the run's dataset and inpainter. The chance level of the contrast and
hit-rate tables is the run's stored ``random`` baseline set of each concept; without one the text says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.document import Figure, Section, Table, Text, fmt, slug
from engine.errors import KneuronError
from engine.pipelines.run import RunReader
from engine.pipelines.sets import StoredSet

if TYPE_CHECKING:
    from engine.pipelines.report import ReportConfig

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
    from engine.heatmap import heatmap_figure

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
    from engine.heatmap import contrast_share, object_contrasts, share_vs_others

    methods = methods_of(sets, concepts, config.method)
    section.blocks.append(Text(
        "Heatmap contrast (`heatmap_object_contrast`, heat = "
        f"{config.heat_value} of the activations, each heatmap normalised to [0, 1]) over up to "
        f"{config.contrast_images} evaluation images per concept. Each cell: share of images whose mean heat "
        "inside the concept's mask is higher than outside it / share of the images showing other objects whose "
        "mean heat on the concept's object is higher than on those objects. All sets of a concept are drawn on "
        "the same images." + chance_note(sets, concepts)))
    rows = []
    pooled: dict[str, list[Any]] = {m: [] for m in methods}
    shares: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        ids = images.get(concept, [])[:config.contrast_images]
        named = {m: sets[(concept, m)].pairs for m in methods if (concept, m) in sets and sets[(concept, m)].neurons}
        if not ids or not named:
            continue
        result = object_contrasts(adapter, dataset, ids, concept, named, n_probes=config.n_probes,
                                  value=config.heat_value)
        cells: list[Any] = [concept, len(ids)]
        for method in methods:
            if method in result:
                share, per_image = result[method]
                pooled[method] += per_image
                others = share_vs_others(per_image)
                shares.setdefault(concept, {})[method] = {"vs_rest": share, "vs_other_objects": others}
                cells.append(f"{fmt(share)} / {fmt(others)}")
            else:
                cells.append("—")
        rows.append(cells)
    overall = {m: {"vs_rest": contrast_share(v), "vs_other_objects": share_vs_others(v), "images": len(v)}
               for m, v in pooled.items()}
    rows.append(["all concepts (pooled images)", sum(r[1] for r in rows)]
                + [f"{fmt(overall[m]['vs_rest'])} / {fmt(overall[m]['vs_other_objects'])}" for m in methods])
    section.blocks.append(Table(["concept", "images"] + methods, rows,
                                caption="share brighter inside than outside / than on the other objects"))
    summary["heatmap_contrast"] = {"per_concept": shares, "pooled": overall, "method": config.method,
                                   "value": config.heat_value}


def decoding_blocks(adapter: Any, sets: Sets, concepts: list[str], config: ReportConfig, section: Section,
                    summary: dict[str, Any]) -> None:
    from engine.decode import concept_hit_rate, concept_words, decode_neurons

    methods = methods_of(sets, concepts, config.method)
    section.blocks.append(Text(
        f"Each neuron's output weight W_down[:, i] projected through the unembedding W_U (top {config.k} tokens), "
        "without and with the final RMSNorm. Hit rate: share of a set's neurons whose top tokens contain the "
        "concept word (its plural or first sub-token counts)." + chance_note(sets, concepts)))
    hit_rows = []
    hits: dict[str, dict[str, Any]] = {}
    totals: dict[str, list[float]] = {m: [0.0, 0.0, 0.0] for m in methods}  # plain hits, norm hits, neurons
    for concept in concepts:
        words = concept_words(adapter, concept)
        cells: list[Any] = [concept]
        for method in methods:
            stored = sets.get((concept, method))
            if stored is None or not stored.neurons:
                cells.append("—")
                continue
            pairs = stored.pairs
            plain = concept_hit_rate(decode_neurons(adapter, pairs, k=config.k), words)
            normed = concept_hit_rate(decode_neurons(adapter, pairs, k=config.k, final_norm=True), words)
            hits.setdefault(concept, {})[method] = {"plain": plain, "final_norm": normed}
            totals[method] = [totals[method][0] + plain * len(pairs), totals[method][1] + normed * len(pairs),
                              totals[method][2] + len(pairs)]
            cells.append(f"{fmt(plain)} / {fmt(normed)}")
        hit_rows.append(cells)
    pooled = {m: {"plain": t[0] / t[2], "final_norm": t[1] / t[2], "neurons": int(t[2])}
              for m, t in totals.items() if t[2]}
    hit_rows.append(["all concepts (pooled neurons)"] + [
        f"{fmt(pooled[m]['plain'])} / {fmt(pooled[m]['final_norm'])}" if m in pooled else "—" for m in methods])
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
