"""Streaming readers and writers: BEIR folders, JSONL and TSV corpora, TREC runs."""
