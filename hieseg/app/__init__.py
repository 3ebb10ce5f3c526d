"""The user-facing layer: the one-case pipeline (``Segmenter``), the Python API and the command line."""
