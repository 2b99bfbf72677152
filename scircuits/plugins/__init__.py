"""Built-in plugins. They register through the same hooks a third-party package uses."""
