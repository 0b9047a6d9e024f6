"""The ingest step: plan, record and commit a run's neuron signals."""
