"""Models: the registry, the one model-reference resolver, loading, the fast training classes, inference."""
