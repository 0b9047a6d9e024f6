"""Changing what a model does through its neurons: captioning with a set suppressed (ablation modes, several sets at
once), editing a set into a model folder."""
