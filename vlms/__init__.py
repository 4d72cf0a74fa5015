"""vlms: one adapter per VLM family (loading, prompts, token geometry and roles, hook sites, scoring) and extraction into the store."""
