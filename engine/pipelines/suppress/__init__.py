"""The suppress step: caption with neuron sets suppressed and score the captions."""
