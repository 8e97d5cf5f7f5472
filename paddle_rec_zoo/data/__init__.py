"""Data: the batch contract (`paddle_rec_zoo.schema`) made real by readers and formats: the slot
text parser, the binary data set, the data layer (`dataset`: listing, loading, batching; over
`cache`, the parsed-data cache, `column_files`, its files, `parallel_parse`, one file parsed by
several processes, `prefetch` and `read_stats`) and the Ali-CCP data set (`ali_ccp`: its reader,
raw converter and synthetic generator).

Imports nothing from `paddle_rec_zoo.nn` or `paddle_rec_zoo.run` (tests/test_layout.py).
"""
