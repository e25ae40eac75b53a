"""Sources: one module per URI scheme behind the small `Source` protocol in `base`.

Sources list a model's files and read byte ranges. They do no disk I/O of their own and never
read `os.environ`: credentials and settings arrive as an explicit mapping.
"""
