"""The `toolkit` command line: thin Click commands over the library."""
