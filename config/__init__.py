"""Settings: schema, YAML loading with line numbers, environment overrides."""
