"""Container images: references, the OCI distribution client, platform matching and pulls."""
