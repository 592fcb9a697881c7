"""Activation capture, the activation store and sparse-autoencoder training/evaluation (sae-lens)."""
