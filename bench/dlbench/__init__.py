"""Parts of the download benchmark (`bench/download.py`): the synthetic model, the servers,
the measured runs of each tool, and the report."""
