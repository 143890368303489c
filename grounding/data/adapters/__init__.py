"""Dataset adapters: each reads one dataset's own layout and returns a manifest table
(``grounding.data.schema.MANIFEST_SCHEMA``) plus a dict of counts (rows read, skipped and why)."""
