"""WHAT to remove: plans, family tables, bypass hooks, suggestions. Imports no torch at module level."""
