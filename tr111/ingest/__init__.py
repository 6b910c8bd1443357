"""Stage 1, ingest: walk a corpus of CSV, JSON and Markdown files into one data summary
(corpus.py orchestrates, files.py reads and fingerprints, parsers.py parses)."""
