"""The in-app offer channel: the catalog, offer instances and the rules for showing and accepting them."""
