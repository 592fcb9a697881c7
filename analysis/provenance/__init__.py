"""Slot provenance: slot → atoms → tokens → pixels (`core`), the per-sample figure (`figures`), the report
(`report`), a trained model's head inputs (`model_inputs`) and `segcompass-analyze provenance` (`command`)."""
