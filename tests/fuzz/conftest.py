"""tests/fuzz holds fuzz targets run on their own (see fuzz_parser.py), not pytest tests."""

collect_ignore_glob = ["*.py"]
