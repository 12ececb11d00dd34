"""A run: options, config, plan, shards, huge-image jobs, rows, outputs tables, QC.

Also the runtime state, the clock and the run itself.
"""
