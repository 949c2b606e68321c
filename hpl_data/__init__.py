"""hpl_data: rollouts, Monte-Carlo labels, preference pairs and Parquet datasets."""

__version__ = "0.1.0"
