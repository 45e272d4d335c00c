"""Canonicalization passes: bring any exporter's graph into the form later passes expect."""
