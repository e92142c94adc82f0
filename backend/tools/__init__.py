"""What users run beside the backend: the `isal` command, the demo, local servers, the Label Studio simulation."""
