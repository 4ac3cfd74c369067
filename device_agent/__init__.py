"""FieldSync device agent: placeholder until the agent lands."""
