"""tracklog: the thin client. `import tracklog` never imports the daemon."""

__version__ = "0.1.0"
