"""The embedded default cloud (`sync-local`): moto, the template's resources, a local gateway."""
