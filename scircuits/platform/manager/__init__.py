"""The plugin manager: loads built-in and entry-point plugins and fills one registry per family."""
