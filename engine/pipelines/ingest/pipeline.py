"""The ingest pipeline: COCO (concept, image) pairs -> inpaint -> caption -> record -> warehouse batches.

For every concept (a COCO category) the images that contain it are split deterministically into
identification and evaluation sets (`split_ident_eval`, stored in the ``splits`` table). Every identification
image (up to ``images_per_concept``) becomes one pair: the original image and the image with the union of the
concept's instance masks, dilated by ``margin_px``, inpainted away. Per batch of pairs:

1. both images are captioned greedily (`caption_images`);
2. the target ``y^c`` is the logit of the concept's first sub-token where the model predicts it in its own
   teacher-forced caption of the original image; when the caption does not contain the concept word, the
   fixed answer prefix (``adapter.answer_prefix``) is teacher-forced and ``y^c`` is read right after it
   (``samples.target_source`` says which: ``caption`` | ``prefix``). A concept word the tokenizer splits into
   several sub-tokens is looked up as the whole sub-token sequence and ``y^c`` uses its first sub-token (noted
   once per concept; the split is stored under ``concept_tokens`` in ``runs.config_json``);
3. `record_pairs` runs originals and inpainted images through the model together and reduces on device;
4. the ``samples``, ``neuron_stats`` and ``token_stats`` rows of the batch are committed as one warehouse batch
   (the first batch of a run also carries its ``runs`` row and the ``splits`` of all its concepts).

The run id is a function of what determines the recorded values (model weights fingerprint, prompt, dtype,
dataset root and split, concepts, image selection, seed, positions, top-k, inpainter), so rerunning the same
command resumes the same run: pairs with a committed ``samples`` row are skipped, the stored splits are reused.
Pairs are grouped into batches per concept in a fixed order, so a resumed run forms the same batches as an
uninterrupted one and ends with the same rows. A pair whose image is missing or unreadable or whose mask is
empty gets a ``samples`` row with ``status = 'skipped'`` and the reason; problems with the whole run (unknown
concept, a model that does not load, another writer) raise `KneuronError` before anything is written.

This module is the local engine. The start of a run (`ingest_start`: model facts, resume, plan) and the work of
one chunk (`ingest_chunk`: images -> rows -> one committed batch) are shared with the Ray engine
(`kneuron.engine.pipelines.ingest.ray`, ``kneuron ingest --engine ray``), which records the same chunks in Ray workers.
"""
from __future__ import annotations

from collections.abc import Callable

from kneuron import warehouse
from kneuron.engine.models import load_model, resolve_device, resolve_model_path
from kneuron.engine.models.base import VLMAdapter
from kneuron.engine.pipelines.ingest.chunk import ChunkInputs, chunk_result, commit_chunk, record_chunk
from kneuron.engine.pipelines.ingest.config import IngestConfig
from kneuron.engine.pipelines.ingest.plan import build_inpainter
from kneuron.engine.pipelines.ingest.start import (
    IngestSummary,
    begin_run,
    model_head,
    new_folder_removed_on_failure,
    plan_run,
    stored_image_digests,
    stored_samples,
)
from kneuron.engine.runtime.progress import Progress

Log = Callable[[str], None]

__all__ = ["ChunkInputs", "IngestConfig", "IngestSummary", "record_chunk", "run_ingest", "stored_image_digests",
           "stored_samples"]


def run_ingest(config: IngestConfig, adapter: VLMAdapter | None = None, log: Log | None = None) -> IngestSummary:
    """Ingest ``config`` into its warehouse (resuming the run if it is already there); see the module docstring.

    ``adapter``: an already loaded model (then ``config.model``/``device``/``dtype`` are not used); otherwise the
    model is loaded once the writer lock is held (a second writer is refused before any loading).
    ``log``: where one-line notes and progress lines go (e.g. ``click.echo`` to stderr); notes are also in the
    summary.
    """
    start = begin_run(config, log)
    dataset = start.dataset
    device = resolve_device(config.device) if adapter is None else str(adapter.device)
    if adapter is None:
        resolve_model_path(config.model)  # a model that is not there fails before the warehouse folder is made
    with new_folder_removed_on_failure(config.warehouse), \
            warehouse.open_warehouse(config.warehouse, create=True) as wh:  # a second writer fails here, at once
        if adapter is None:
            adapter = load_model(config.model, device=device, dtype=None if config.dtype == "auto" else config.dtype,
                                 log=log if config.progress else None)
        inpainter = build_inpainter(config, device)
        head = model_head(adapter, dataset, start.concepts, start.automatic, config, inpainter, device)
        plan = plan_run(wh, head, dataset, config, start.note)
        inputs = ChunkInputs(config, dataset, adapter, inpainter, head.concept_ids, head.prefix_ids, plan.run_id)
        progress = Progress(plan.pending_pairs, plan.label(), log if (log and config.progress) else (lambda _: None))
        try:
            for index, (concept, ids) in enumerate(plan.todo):
                commit_chunk(wh, plan, chunk_result(inputs, index, concept, ids), progress.advance)
        finally:
            progress.close()
    return start.finish(plan.summary)
