"""hpl's envs for other trainers and agent frameworks (nothing here imports ``hpl_data``)."""
