"""report: what `localmodel status` shows, computed from cluster objects by pure functions."""
