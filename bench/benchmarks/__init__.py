"""asv benchmarks of rnncore (see bench/README.md)."""
