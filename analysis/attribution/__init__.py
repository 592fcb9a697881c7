"""Which atoms drove each slot: act × grad attribution (`core`, `tables`), edits of the sparse support
(`support_filter`), the causal check (`causal`, through the backbone: `causal_splice`; statistics:
`causal_summary`), and the head inputs they read (`head_inputs`)."""
