"""The technical report: a context built from warehouse rows, rendered by Jinja."""
