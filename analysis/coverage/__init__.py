"""Instance coverage: do the image tokens where the SAE is most active cover the objects? (`core`), its tables
(`tables`) and figure (`plot`); the command is `command.py` (`segcompass-analyze coverage`)."""
