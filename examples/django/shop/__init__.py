"""The web app: Django views that call the accounts service over the bus."""
