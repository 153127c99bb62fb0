"""tritonctl."""
