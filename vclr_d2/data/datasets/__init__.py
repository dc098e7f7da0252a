"""Dataset registration: official open-world names and the synthetic open-world set."""
