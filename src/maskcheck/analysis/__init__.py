"""Static analysis: shapes with labelled axes, transfer functions for tensor operations, and data flow."""
