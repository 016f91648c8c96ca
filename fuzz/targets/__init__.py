"""One module per parser: `MAX_LEN` and `test_one_input(data)` (see fuzz/__init__.py)."""
