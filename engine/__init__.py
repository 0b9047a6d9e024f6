"""kneuron engine: everything that touches a model (models, data, inpainting, recording, suppression)."""
