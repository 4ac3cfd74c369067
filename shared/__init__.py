"""FieldSync code shared by the Lambdas and, for `contracts` and `conflict`, the device agent."""
