"""Small helpers every stage uses: progress display, provenance records."""
