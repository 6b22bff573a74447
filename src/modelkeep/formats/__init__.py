"""On-disk formats, each a reader and a writer of ``ModelState``; ``registry`` picks one."""
