"""The plugin contract: hook specifications, errors, option parsing and the base class of each plugin
family. It imports nothing from the other subpackages of ``scircuits.platform``."""
