"""FieldSync benchmarks: each module measures one concern side by side with its peers."""
