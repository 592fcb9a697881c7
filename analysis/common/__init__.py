"""What several analyses share: loading an SAE and a store (`inputs`), streaming SAE activity over a store
(`activity`), the instances of captured documents (`instances`), bootstrap intervals (`stats`)."""
