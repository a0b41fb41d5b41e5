"""One module per group of `zoo` sub-commands; each exposes `register(subparsers)`."""
