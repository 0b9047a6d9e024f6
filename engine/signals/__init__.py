"""What a neuron signal is and how it is recorded and read: neuron sets, the recorder, massive/fragile units,
vocabulary decoding, image heatmaps."""
