"""PathProx paper experiments: models, data, training harness, plots and reports."""
