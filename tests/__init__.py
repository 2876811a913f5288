"""npuagent test suite."""
