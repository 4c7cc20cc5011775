"""The kernel under every stage: the clock, each function's settings, observability, AWS clients, errors, YAML files."""
