"""Experiment configs: `python main.py --config=configs/<name>.py[:args] --workdir=DIR`."""
