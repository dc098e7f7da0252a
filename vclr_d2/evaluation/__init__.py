"""Open-world (class-agnostic) average-recall evaluation."""
