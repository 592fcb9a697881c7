"""Atom naming: max-activating examples, offline labels, held-out consistency and atom cards (`naming` runs
them; `scan`, `stream`, `examples`, `labels`, `consistency`, `tables`, `cards`); `command` is
`segcompass-analyze atoms`."""
