"""CLI command groups, one module per part of the library; each has ``register(app)``."""
