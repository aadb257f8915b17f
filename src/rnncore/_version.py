"""The version of rnncore (one place; read by __init__, io, show_config and the CLI)."""
__version__ = "0.1.0"
