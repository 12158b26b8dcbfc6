"""The kernel's own defaults, written and registered (by entry point) like any plugin."""
