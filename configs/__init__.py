"""One config per paper experiment: ``configs.<experiment>.get_config()``."""
