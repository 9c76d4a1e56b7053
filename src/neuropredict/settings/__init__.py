"""Configuration in parts: contract names (contracts), the params.yaml schema (schema), file
locations (paths) and what the environment says about endpoints (env)."""
