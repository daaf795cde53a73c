"""Sharing it: the model card (from the records) and the Hub push."""
