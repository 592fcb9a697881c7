"""Concept analyses: attribution, instance coverage, sparsity by token type, slot provenance, reports."""
