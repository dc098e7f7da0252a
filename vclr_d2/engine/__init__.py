"""Training engine: trainer, EMA hook and optimizer for v-CLR."""
