"""`delineo batch`: many slides delineated on Dask, one GeoJSON each and a summary.csv.

`slides` finds the slides, `summary` keeps summary.csv (what is done, for resuming), `task` is
what runs on a worker (open, engine cached per worker process, run, write), `cluster` is the
only module that imports Dask (the `[batch]` extra; the viewer never imports this package).
"""
