"""Enterprise single sign-on per organization (issue 14)."""
