"""Recipes: typed schemas of every run kind, YAML loading with overrides, resolution against the registries."""
