"""One module per CLI command: each turns parsed options into library calls and renders the result."""
