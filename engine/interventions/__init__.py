"""Changing what a model does through its neurons: captioning with a set suppressed (ablation modes, several sets at
once), editing a set into a model folder."""

#: ablation modes: what a suppressed unit's activation is replaced with (zero: the paper; mean: its mean over
#: reference images per position kind; resample: another reference image's activation)
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")
