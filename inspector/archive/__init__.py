"""The reject archive: every non-PASS frame (and a sample of PASS) kept with its verdict, off the hot path."""
