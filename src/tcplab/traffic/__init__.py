"""Makes traffic: echo servers (one module per model), the client."""
