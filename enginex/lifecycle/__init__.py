"""The data life cycle of an organization: export, import (docs/DATA_LIFECYCLE.md)."""
