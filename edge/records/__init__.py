"""The record store: decisions, events and runs in SQLite, flagged images in a dated folder tree."""
