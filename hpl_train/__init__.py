"""hpl_train: the HPL trainer (reads Parquet; imports no env)."""

__version__ = "0.1.0"
