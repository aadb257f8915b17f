"""The harness behind ``bench/compare.py``: in a source checkout only, not in the wheel."""
