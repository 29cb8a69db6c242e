"""The model stage: load a base (quantized), put a method's adapter on it (P-tuning v2's prefix and its neighbours), save and reload it, generate with it."""
