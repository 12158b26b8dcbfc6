"""The accounts service: its API declaration (shared with the web app) and its bus module."""
