"""The APIs callers speak, one module each: each turns its requests into the gateway's chat form
and the answers back."""
