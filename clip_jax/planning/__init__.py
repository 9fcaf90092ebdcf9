"""`clip-jax plan`: the train step compiled for a TPU slice without one, and what it costs."""
