"""Core step kinds (filled in by the engine)."""
