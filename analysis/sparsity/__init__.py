"""Sparsity by token type: L0, activation mass and distinct atoms per kind of token (`core`); the command is
`command.py` (`segcompass-analyze sparsity`)."""
