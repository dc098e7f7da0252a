"""Data: the v-CLR dataset mapper, open-world dataset registration and the synthetic set."""
