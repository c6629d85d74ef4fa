"""samlxml package."""
